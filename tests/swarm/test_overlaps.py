"""Explicit subnets that collide with an overlay's, on a two-node swarm (its own, for this module).

A RequestPool names no network, so the driver cannot tell

* a swarm node's local copy of an overlay (``local`` space, exactly the global subnet)
  from a bridge created with ``--subnet <that subnet>``, nor
* the swarm allocator's replay of an overlay (``global``, exactly a held subnet) from a
  second overlay created with ``--subnet <that subnet>``,

and grants the pool to both. The gateway request that follows tells them apart (a copy
or a replay names the network's own gateway; another network asks for one of its own),
and the rollback's ReleasePool must then leave the first network's pool whole. The
duplicate-overlay tests run first and the bridge-removal test last: had a bridge been
granted the subnet, the worker would need a while to forget it.
"""

from __future__ import annotations

import pytest

from tests.swarm.cluster import DRIVER, Cluster, Request, settle

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.swarm]


def create_duplicate(cluster: Cluster, name: str, subnet: str) -> list[Request]:
    """Create an overlay with an explicit ``subnet`` and wait for the driver's answer; its RequestPools.

    Swarm accepts the network at once and allocates it in the background, refused or not.
    """
    manager = cluster["m1"]
    offset = manager.engine.log_offset()
    manager.docker("network", "create", "-d", "overlay", "--ipam-driver", DRIVER, "--subnet", subnet, name, check=True)

    def pool_requests() -> list[Request]:
        return [r for r in manager.requests(offset) if r.method == "RequestPool"]

    settle(lambda: None if pool_requests() else "no RequestPool yet", timeout=30, what=f"the RequestPool of {name}")
    return pool_requests()


def test_two_overlays_cannot_share_an_explicit_subnet(two_nodes: Cluster) -> None:
    """Docker's own IPAM refuses the second one ("overlaps"), and so does mini-ipam, at its gateway."""
    first = two_nodes.create_overlay(two_nodes["m1"], "ov-first", "--subnet", "198.19.90.0/24")
    requests = create_duplicate(two_nodes, "ov-second", str(first.subnet))
    second = two_nodes["m1"].network("ov-second")
    assert second is not None
    assert not second.configs, f"ov-second got {second.configs} though ov-first holds it; the driver: {requests}"


def test_removing_a_duplicate_overlay_keeps_the_first_ones_subnet(two_nodes: Cluster) -> None:
    """The refused duplicate's rollback and removal leave the first overlay's pool whole.

    Were it freed, ov-one's tasks would stay in state New ("pool global/<subnet> is not
    known here"), and the subnet could be handed out again.
    """
    manager = two_nodes["m1"]
    first = two_nodes.create_overlay(manager, "ov-one", "--subnet", "198.19.91.0/24")
    create_duplicate(two_nodes, "ov-two", str(first.subnet))
    duplicate = manager.network("ov-two")
    offset = manager.engine.log_offset()
    two_nodes.remove_network(manager, "ov-two")
    if duplicate is not None and duplicate.configs:
        # Swarm frees a removed network's pool in the background: wait for the driver's ReleasePool.
        settle(
            lambda: None if any(r.method == "ReleasePool" for r in manager.requests(offset)) else "no ReleasePool yet",
            timeout=30,
            what="the swarm to release ov-two",
        )

    snapshot = two_nodes.read_map()
    assert [block.subnet for block in snapshot.overlapping(first.subnet)] == [first.subnet], (
        f"ov-one still exists, but its subnet is no longer claimed:\n{snapshot}"
    )
    two_nodes.create_service(manager, "on-one", "ov-one", "--replicas", "1")
    two_nodes.wait_tasks(manager, "on-one", "ov-one", count=1, timeout=30)


def test_a_bridge_cannot_take_the_subnet_of_an_overlay(two_nodes: Cluster) -> None:
    """A bridge with ``--subnet <overlay subnet>`` is refused on a node with the overlay's tasks and without.

    Its pool request looks like the node's copy of the overlay; its gateway request does not.
    """
    manager, worker = two_nodes["m1"], two_nodes["w1"]
    network = two_nodes.overlay_served_everywhere(manager, "ov-taken", "holder", size=28)

    for node in (worker, manager):
        result = node.try_bridge("br-steal", "--subnet", str(network.subnet))
        if result.returncode == 0:
            stolen = node.network("br-steal")
            pytest.fail(
                f"a bridge on {node.name} got the subnet of overlay ov-taken, {network.subnet} "
                f"(bridge IPAM {stolen and stolen.configs}); the store now holds:\n{two_nodes.read_map()}"
            )
        assert "overlaps" in result.stderr, result.stderr


def test_removing_such_a_bridge_keeps_the_nodes_copy_of_the_overlay(two_nodes: Cluster) -> None:
    """The refused bridge's rollback (a ReleasePool of the pool it was granted) keeps the worker's copy.

    Were the copy closed, the worker could not attach anything to the overlay any more
    ("IpamDriver.RequestAddress: pool local/<subnet> is not known here").
    """
    manager, worker = two_nodes["m1"], two_nodes["w1"]
    network = two_nodes.overlay_served_everywhere(manager, "ov-shared", "holder", size=28)
    settle(lambda: two_nodes.claims_mismatch(manager, network, ["holder"]), timeout=30, what="store = swarm")
    copy = two_nodes.read_map().held(network.subnet, "local@w1")

    if worker.try_bridge("br-shared", "--subnet", str(network.subnet)).returncode == 0:
        worker.docker("network", "rm", "br-shared", check=True)

    after = two_nodes.read_map()
    assert after.held(network.subnet, "local@w1") == copy, (
        f"w1's copy of ov-shared held {sorted(map(str, copy))} before the bridge came and went; now:\n{after}"
    )
    late = worker.run_container("late", "ov-shared")
    assert worker.container_addresses(late, network.subnet), "the late container has no address on ov-shared"
