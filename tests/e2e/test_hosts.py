"""Several hosts: three engines, each in its own namespaces with its own driver, one shared Redis.

Every host's driver carves from the same parent; only the shared store keeps
them apart. The engines race: networks are created from all of them at once.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.engines import Host, NetworkInfo, assert_disjoint

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SIZES = (28, 29, 26, 30, 27, 28)
"""Per host; mixed, so that the hosts' claims interleave at different alignments."""


@pytest.fixture
def hosts(cluster: list[Host], parent: ipaddress.IPv4Network) -> Iterator[list[Host]]:
    """The cluster, emptied after each test; fails the test if any host's driver leaked a subnet.

    Once every engine is empty, one host must be able to take the whole parent.
    """
    yield cluster
    with ThreadPoolExecutor(len(cluster)) as pool:
        list(pool.map(lambda host: host.engine.wipe(), cluster))
    whole = cluster[0].try_network("leak-check", "--ipam-opt", f"size={parent.prefixlen}")
    assert whole.returncode == 0, f"the shared store still holds part of {parent}: {whole.stderr}"
    cluster[0].engine.docker("network", "rm", "leak-check", check=True)


def test_concurrent_networks_on_all_hosts_never_overlap(hosts: list[Host], parent: ipaddress.IPv4Network) -> None:
    jobs = [(host, f"{host.name}-net{i}", size) for host in hosts for i, size in enumerate(SIZES)]

    def create(job: tuple[Host, str, int]) -> subprocess.CompletedProcess[str]:
        host, name, size = job
        return host.try_network(name, "--ipam-opt", f"size={size}")

    # One thread per network: every engine sends its RequestPools while the others do.
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(create, jobs))
    failures = [
        f"{name}: {result.stderr}" for (_, name, _), result in zip(jobs, results, strict=True) if result.returncode
    ]
    assert not failures, "\n".join(failures)

    networks: dict[str, NetworkInfo] = {name: host.engine.network(name) for host, name, _ in jobs}
    for _, name, size in jobs:
        subnet = networks[name].subnet
        assert subnet.prefixlen == size and subnet.subnet_of(parent), f"{name}: {subnet}"
    assert_disjoint([network.subnet for network in networks.values()])

    # A container on every host works: it has an address in its network and reaches another host over the LAN.
    for host, neighbour in zip(hosts, hosts[1:] + hosts[:1], strict=True):
        network = networks[f"{host.name}-net0"]
        container = host.start_container(f"{host.name}-c", network.name)
        address = host.engine.address(container)
        assert address.network == network.subnet, f"{container} on {host.name} got {address}, outside {network.subnet}"
        assert host.engine.ping(container, network.gateway(network.subnet))
        assert neighbour.address is not None
        assert host.engine.ping(container, neighbour.address.ip), f"{container} cannot reach host {neighbour.name}"


def test_a_subnet_held_on_another_host_is_refused_with_its_holder(hosts: list[Host]) -> None:
    a, b, _ = hosts
    held = a.create_network("held-on-a", "--ipam-opt", "size=28")
    refused = b.try_network("steal-on-b", "--subnet", str(held.subnet))
    assert refused.returncode != 0
    assert "overlaps" in refused.stderr and "host a" in refused.stderr, refused.stderr

    # Released on a, it is free for b.
    a.engine.docker("network", "rm", "held-on-a", check=True)
    moved = b.create_network("now-on-b", "--subnet", str(held.subnet))
    assert moved.subnet == held.subnet
