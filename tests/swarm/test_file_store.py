"""A one-node swarm whose plugin keeps its claims in a state file (``file://``, no Redis).

The node is manager and worker at once: its plugin gets the global requests and the
node-local copy. The state file is read with ``FileStore(path, read_only=True)`` while
the plugin runs (the ``one_node`` fixture's ``read_map``).
"""

from __future__ import annotations

import pytest

from tests.swarm.cluster import Cluster, granted, settle

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.swarm]


def test_overlay_service_and_engine_restart_on_a_state_file(one_node: Cluster) -> None:
    node = one_node["s1"]
    network = one_node.create_overlay(node, "ov-file", "--ipam-opt", "size=28")
    subnet = network.subnet
    one_node.create_service(node, "pair", "ov-file", "--replicas", "2")
    tasks = one_node.wait_tasks(node, "pair", "ov-file", count=2)
    first, second = (task.addresses[0] for task in tasks)
    assert first != second and first.network == second.network == subnet, tasks
    assert node.reaches(tasks[0].container, second.ip)

    settle(lambda: one_node.claims_mismatch(node, network, ["pair"]), timeout=30, what="state file = swarm")
    snapshot = one_node.read_map()
    (block,) = snapshot.overlapping(subnet)
    assert (block.label, block.owner) == ("global", "s1"), block
    assert snapshot.scopes(subnet) == {"global", "local@s1"}

    # The engine restarts, and its plugin with it: the swarm allocator replays into the state file.
    offset = node.engine.log_offset()
    node.engine.restart()
    one_node.wait_ready(node, ["s1"], timeout=90)
    tasks = one_node.wait_tasks(node, "pair", "ov-file", count=2)
    requests = node.requests(offset)
    assert granted(requests, "RequestPool", f"global/{subnet}"), f"no replay of the global pool: {requests}"
    assert node.ipam_problems(offset) == []
    settle(lambda: one_node.claims_mismatch(node, network, ["pair"]), timeout=60, what="state file = swarm")
    assert [block.subnet for block in one_node.read_map().overlapping(subnet)] == [subnet]
    assert node.reaches(tasks[0].container, tasks[1].addresses[0].ip)


def test_service_and_network_rm_empty_the_state_file(one_node: Cluster) -> None:
    node = one_node["s1"]
    network = one_node.create_overlay(node, "ov-gone", "--ipam-opt", "size=27")
    one_node.create_service(node, "brief", "ov-gone", "--replicas", "3")
    one_node.wait_tasks(node, "brief", "ov-gone", count=3)
    attached = node.run_container("attached", "ov-gone")
    settle(lambda: one_node.claims_mismatch(node, network, ["brief"]), timeout=30, what="state file = swarm")

    node.docker("service", "rm", "brief", check=True)
    node.docker("rm", "-f", attached, check=True)
    one_node.remove_network(node, "ov-gone")

    def empty() -> str | None:
        snapshot = one_node.read_map()
        return None if not snapshot.blocks and not snapshot.pools else str(snapshot)

    settle(empty, timeout=60, what="the state file to hold nothing")
