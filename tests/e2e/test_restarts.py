"""Restarts under real containers: the driver crashes, the engine restarts.

Docker does not replay anything to a driver that restarts (the driver declares
``RequiresRequestReplay: false``): whatever it handed out must come back from
its own store, or the next network or container collides with a running one.
"""

from __future__ import annotations

import ipaddress
import re

import pytest

from tests.e2e.engines import Engine, Host, assert_disjoint
from tests.servers import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_driver_killed_and_restarted_keeps_every_claim(host: Host, engine: Engine) -> None:
    first = host.create_network("before1", "--ipam-opt", "size=29")
    second = host.create_network("before2", "--subnet", "198.19.90.0/28", "--ip-range", "198.19.90.8/29")
    names = host.start_containers(("old1", "before1"), ("old2", "before1"), ("old3", "before2"))
    running = {name: engine.address(name) for name in names}

    old_pid = host.driver.process.pid if host.driver.process else None
    host.driver.restart()  # SIGKILL: no clean shutdown, the socket file stays behind
    assert host.driver.process is not None and host.driver.process.pid != old_pid

    # Running containers never noticed.
    assert engine.ping("old1", running["old2"].ip)
    assert engine.ping("old2", running["old1"].ip)

    # New networks get subnets nobody holds, of every size, even ones that would fit the old networks' gaps.
    after = [host.create_network(f"after{size}", "--ipam-opt", f"size={size}") for size in (29, 28, 30)]
    assert_disjoint([subnet for network in engine.networks() for subnet in network.subnets()])
    # An explicit request for an old subnet is still refused: the claim survived the crash.
    taken = host.try_network("steal", "--subnet", str(first.subnet))
    assert taken.returncode != 0 and "overlaps" in taken.stderr, taken.stderr

    # Old networks still take containers, with addresses nobody holds.
    in_use = {address.ip for address in running.values()} | {engine.gateway(first), engine.gateway(second)}
    for name in host.start_containers(("new1", "before1"), ("new2", "before1"), ("new3", "before2")):
        address = engine.address(name)
        assert address.ip not in in_use, f"{name} got {address}, already in use by a running container or gateway"
        in_use.add(address.ip)
    assert engine.address("new3").ip in ipaddress.IPv4Network("198.19.90.8/29")
    assert engine.ping("new1", running["old1"].ip)
    containers = host.start_containers(*[(f"on-{network.name}", network.name) for network in after])
    for network, container in zip(after, containers, strict=True):
        assert engine.address(container).network == network.subnet


def test_driver_restarted_twice_in_a_row(host: Host, engine: Engine) -> None:
    """A crash right after a restart (nothing new written yet) must not lose the older state either."""
    network = host.create_network("twice", "--ipam-opt", "size=28")
    held = engine.address(host.start_container("twice1", "twice"))
    host.driver.restart()
    host.driver.restart()
    again = host.try_network("twice-steal", "--subnet", str(network.subnet))
    assert again.returncode != 0 and "overlaps" in again.stderr, again.stderr
    assert engine.address(host.start_container("twice2", "twice")).ip not in (held.ip, network.subnet[1])


def test_engine_restart_keeps_networks_and_brings_containers_back(host: Host, engine: Engine) -> None:
    dynamic = host.create_network("keep1", "--ipam-opt", "size=28")
    explicit = host.create_network("keep2", "--subnet", "198.19.89.0/24", "--gateway", "198.19.89.254")
    dual = host.create_network("keep3", "--ipv6", "--ipam-opt", "size=29")
    containers = {"k1": "keep1", "k2": "keep1", "k3": "keep2", "k4": "keep3"}
    host.start_containers(*[(name, network, "--restart", "always") for name, network in containers.items()])
    before = {name: engine.network(name).configs for name in ("keep1", "keep2", "keep3")}

    offset = engine.log_offset()
    engine.restart()

    def all_running() -> bool:
        return all(inspect["State"]["Running"] for inspect in engine.run_json("inspect", *containers))

    wait_until(all_running, timeout=30, what="the --restart always containers to come back")
    assert {name: engine.network(name).configs for name in before} == before

    for name, network_name in containers.items():
        network = {"keep1": dynamic, "keep2": explicit, "keep3": dual}[network_name]
        address = engine.address(name)
        assert address.network == network.subnet, f"{name} came back with {address}, outside {network.subnet}"
        assert address.ip != network.gateway(network.subnet)
    assert engine.addresses("k4", version=6)[0].network == dual.subnets(6)[0]
    assert engine.ping("k1", engine.address("k2").ip)
    assert engine.ping("k3", "198.19.89.254")

    # New containers and networks still fit around what came back.
    extra = engine.address(host.start_container("k5", "keep1"))
    assert extra.ip not in {engine.address(name).ip for name in ("k1", "k2")}
    host.create_network("keep4", "--ipam-opt", "size=28")
    assert_disjoint([subnet for network in engine.networks() for subnet in network.subnets()])

    log = engine.log_since(offset)
    ipam_errors = [line for line in log.splitlines() if "IpamDriver" in line and re.search(r"level=(error|warn)", line)]
    assert not ipam_errors, "\n".join(ipam_errors)
