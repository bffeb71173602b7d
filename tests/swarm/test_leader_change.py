"""Three managers on one Redis: the leader's engine stops, another manager's allocator takes over.

The new leader's allocator starts with an empty memory and re-requests every pool and
address explicitly, through its own node's plugin: a different host from the one that
claimed them. The driver must grant all of it, running tasks must keep their addresses,
and new tasks must get addresses nobody holds.
"""

from __future__ import annotations

import pytest

from tests.swarm.cluster import Cluster, Node, granted, settle

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.swarm]


def test_leader_change_replays_from_another_host_and_keeps_every_address(three_managers: Cluster) -> None:
    m1, m2, m3 = three_managers["m1"], three_managers["m2"], three_managers["m3"]
    assert three_managers.leader() is m1
    network = three_managers.create_overlay(m1, "ov-lead", "--ipam-opt", "size=27")
    subnet = network.subnet
    three_managers.create_service(m1, "steady", "ov-lead", "--mode", "global")
    before = {t.node: t for t in three_managers.wait_tasks(m1, "steady", "ov-lead", nodes=["m1", "m2", "m3"])}
    vips = three_managers.service_vips(m1, "steady", network)
    settle(lambda: three_managers.claims_mismatch(m1, network, ["steady"]), timeout=30, what="store = swarm")
    held_before = three_managers.read_map().held(subnet, "global")
    (block,) = three_managers.read_map().overlapping(subnet)
    assert block.owner == "m1", block

    offsets = {node.name: node.engine.log_offset() for node in (m2, m3)}
    m1.engine.stop()
    new: list[Node | None] = [None]

    def elected() -> str | None:
        new[0] = three_managers.leader(among=[m2, m3])
        return None if new[0] in (m2, m3) else "no leader among m2 and m3 yet"

    settle(elected, timeout=90, what="a new leader")
    leader = new[0]
    assert leader is not None
    follower = m3 if leader is m2 else m2

    # The new leader's allocator re-requested the pool m1 claimed, through its own plugin, and got it.
    def replayed() -> str | None:
        requests = leader.requests(offsets[leader.name])
        return None if granted(requests, "RequestPool", f"global/{subnet}") else f"no replay yet: {requests}"

    settle(replayed, timeout=60, what=f"{leader.name} to replay the global pool")
    for node in (leader, follower):
        refused = [r for r in node.requests(offsets[node.name]) if not r.ok]
        assert refused == [], f"{node.name}: {refused}"
        assert node.ipam_problems(offsets[node.name]) == [], node.name

    # Running tasks kept their addresses, in the swarm's records and on their interfaces; the VIP too.
    after = {t.node: t for t in three_managers.tasks(leader, "steady", "ov-lead") or [] if t.node in ("m2", "m3")}
    for name in ("m2", "m3"):
        assert (after[name].id, after[name].addresses) == (before[name].id, before[name].addresses), name
        node = three_managers[name]
        assert node.container_addresses(after[name].container, subnet) == list(before[name].addresses), name
    assert three_managers.service_vips(leader, "steady", network) == vips

    # New tasks get fresh addresses: none that was held before (m1's included), all distinct.
    three_managers.create_service(leader, "fresh", "ov-lead", "--replicas", "2")
    fresh = three_managers.wait_tasks(leader, "fresh", "ov-lead", count=2)
    fresh_addresses = [address.ip for task in fresh for address in task.addresses]
    assert len(set(fresh_addresses)) == 2 and set(fresh_addresses).isdisjoint(held_before), (fresh, held_before)
    task = fresh[0]
    old = before["m3" if task.node == "m2" else "m2"]
    assert three_managers[task.node].reaches(task.container, old.addresses[0].ip), "a new task cannot reach an old one"

    # m1 comes back as a follower: its task runs again, and the store matches the swarm exactly.
    m1.engine.start()
    m1.engine.wait_ready()
    three_managers.wait_ready(leader, ["m1", "m2", "m3"], timeout=90)
    three_managers.wait_tasks(leader, "steady", "ov-lead", nodes=["m1", "m2", "m3"])
    settle(
        lambda: three_managers.claims_mismatch(leader, network, ["steady", "fresh"]),
        timeout=60,
        what="store = swarm",
    )
    assert [block.subnet for block in three_managers.read_map().overlapping(subnet)] == [subnet]
