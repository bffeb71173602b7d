"""docker-compose v2 (2.40.3) brings up and takes down a project of several mini-ipam networks.

compose v2 drops ``networks.*.ipam.options`` (docker/compose issue 13785), so a size is asked
for with a subnet of "any" address: ``0.0.0.0/N`` or ``::/N``, which the driver reads as
"any free /N". ``docker network inspect`` then shows what the user wrote (``0.0.0.0/29``); the
real subnet is the driver's (``mini-ipam ls``), and the containers' addresses are in it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.engines import (
    SLEEPER,
    Engine,
    EngineUnavailable,
    Host,
    Interface,
    Subnet,
    fetch_release,
    parse_ip_addr,
    run,
)
from tests.servers import unavailable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

COMPOSE = "2.40.3"
PROJECT = "sizes"

NETWORKS: dict[str, tuple[str, ...]] = {
    "small": ("0.0.0.0/29",),
    "medium": ("0.0.0.0/27",),
    "large": ("0.0.0.0/24",),
    "dual": ("0.0.0.0/28", "::/64"),
    "dual-narrow": ("0.0.0.0/30", "::/120"),
}
"""Network -> the subnets asked for, each as "any free /N"."""
IPV6_ONLY = {"only6": ("::/80",)}
"""On engines that make IPv6-only networks (``enable_ipv4: false``, engine 28 and later)."""

SERVICES: dict[str, tuple[str, ...]] = {
    "one": ("small", "large", "dual"),
    "two": ("small", "medium", "dual-narrow"),
    "three": ("medium", "large", "dual"),
}
SERVICES_V6 = {"four": ("only6",)}


def project_file(driver: str, *, ipv6_only: bool) -> dict[str, Any]:
    """The compose project (as data; JSON is valid YAML): every network on ``driver``."""
    networks = {**NETWORKS, **(IPV6_ONLY if ipv6_only else {})}
    services = {**SERVICES, **(SERVICES_V6 if ipv6_only else {})}
    spec: dict[str, Any] = {"name": PROJECT, "services": {}, "networks": {}}
    for name, subnets in networks.items():
        network: dict[str, Any] = {"ipam": {"driver": driver, "config": [{"subnet": s} for s in subnets]}}
        if any(":" in s for s in subnets):
            network["enable_ipv6"] = True
        if name in IPV6_ONLY:
            network["enable_ipv4"] = False
        spec["networks"][name] = network
    for name, joined in services.items():
        spec["services"][name] = {
            "image": "local/busybox:1",
            "pull_policy": "never",
            "command": ["sh", "-c", SLEEPER],
            "stop_grace_period": "1s",
            "networks": list(joined),
        }
    return spec


def compose(engine: Engine, binary: str, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose v2 against ``engine`` only (its socket, its CLI configuration)."""
    env = {**engine.env, "DOCKER_HOST": f"unix://{engine.socket}"}
    return run([binary, "-f", str(project), *args], check=False, timeout=180, env=env)


def driver_pools(host: Host) -> dict[Subnet, dict[str, Any]]:
    """The driver's pools by real subnet, from ``mini-ipam ls --json`` on the host's store."""
    result = run(
        [sys.executable, "-m", "mini_ipam", "ls", "--json", "--store", host.driver.store, "--host-id", host.name],
        timeout=60,
    )
    return {ipaddress.ip_network(pool["subnet"]): pool for pool in json.loads(result.stdout)["pools"]}


def test_compose_v2_up_and_down_networks_of_several_sizes(host: Host, engine: Engine, tmp_path: Path) -> None:
    try:
        binary = str(fetch_release(f"compose-{COMPOSE}").bin_dir / "docker-compose")
    except EngineUnavailable as exc:
        unavailable(str(exc))
    assert engine.release is not None
    ipv6_only = engine.release.major >= 28
    project = tmp_path / "compose.yaml"
    project.write_text(json.dumps(project_file(host.driver.name, ipv6_only=ipv6_only), indent=2))
    networks = {**NETWORKS, **(IPV6_ONLY if ipv6_only else {})}
    services = {**SERVICES, **(SERVICES_V6 if ipv6_only else {})}

    up = compose(engine, binary, project, "up", "-d", "--wait")
    assert up.returncode == 0, up.stderr

    pools = driver_pools(host)
    real: dict[str, list[Subnet]] = {}
    for name, asked in networks.items():
        inspect = engine.network(f"{PROJECT}_{name}")
        assert inspect.driver == host.driver.name
        # inspect shows the subnets as asked: the real ones are the driver's.
        assert sorted(str(c["Subnet"]) for c in inspect.configs) == sorted(asked), inspect.configs
        if name in IPV6_ONLY:
            assert inspect.raw.get("EnableIPv4") is False, inspect.raw
        bridge = engine.namespace.ip("addr", "show", "dev", inspect.bridge).stdout
        # The bridge holds one gateway per subnet asked; each is inside a pool of exactly the size asked.
        held: list[Subnet] = []
        for wanted in asked:
            asked_net = ipaddress.ip_network(wanted)
            gateways = [
                address
                for address in parse_ip_addr(bridge, scope="global")
                if address.version == asked_net.version and address.network in pools
            ]
            assert len(gateways) == 1, f"{name}: bridge addresses {bridge}"
            (gateway,) = gateways
            assert gateway.network.prefixlen == asked_net.prefixlen, f"{name}: asked {wanted}, got {gateway.network}"
            assert str(gateway.ip) == pools[gateway.network]["gateway"], pools[gateway.network]
            held.append(gateway.network)
        real[name] = held
    every = [subnet for subnets in real.values() for subnet in subnets]
    assert len(set(every)) == len(every) and set(every) == set(pools), (real, sorted(pools, key=str))
    for i, first in enumerate(every):
        for second in every[i + 1 :]:
            assert not first.overlaps(second), f"{first} overlaps {second}"

    # Every container has one address in each real subnet of each network it joined, and the
    # driver holds exactly those addresses (besides the gateways).
    containers: dict[Subnet, set[str]] = {subnet: set() for subnet in every}
    for service, joined in services.items():
        container = f"{PROJECT}-{service}-1"
        found: list[Interface] = [
            *engine.addresses(container, version=4, device=None),
            *engine.addresses(container, version=6, device=None),
        ]
        for name in joined:
            for subnet in real[name]:
                inside = [address for address in found if address.network == subnet]
                assert len(inside) == 1, f"{container} on {name}: {found}, wanted one in {subnet}"
                containers[subnet].add(str(inside[0].ip))
        wanted = {subnet for name in joined for subnet in real[name]}
        assert {address.network for address in found} == wanted, f"{container}: {found}"
    for subnet, addresses in containers.items():
        gateway = pools[subnet]["gateway"]
        assert set(pools[subnet]["addresses"]) - {gateway} == addresses, (subnet, pools[subnet])

    down = compose(engine, binary, project, "down")
    assert down.returncode == 0, down.stderr
    left = engine.docker("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
    assert not [network for network in left if network.startswith(f"{PROJECT}_")], left
    assert driver_pools(host) == {}, "the driver still holds pools after compose down"
