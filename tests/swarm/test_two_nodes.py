"""A two-node swarm (manager ``m1``, worker ``w1``), the managed plugin on both, one real Redis.

Swarm's allocator on the manager claims each overlay's subnet, gateway, virtual IPs and
task addresses in the **global** space; every node that runs a task then makes a
node-local copy (the same subnet in its **local** space, the same addresses explicitly).
The store must end up holding exactly what the swarm uses, after restarts too, and
nothing once it is all removed (the ``two_nodes`` fixture checks that after every test).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.engines import assert_disjoint
from tests.swarm.cluster import DRIVER, PARENT, Cluster, granted, settle

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.swarm]


def test_overlay_gets_a_global_subnet_and_its_tasks_reach_each_other(two_nodes: Cluster) -> None:
    manager, worker = two_nodes["m1"], two_nodes["w1"]
    offsets = {node.name: node.engine.log_offset() for node in (manager, worker)}

    network = two_nodes.create_overlay(manager, "ov", "--ipam-opt", "size=28")
    subnet, gateway = network.subnet, network.gateway(network.subnet)
    assert network.driver == DRIVER
    assert subnet.prefixlen == 28 and subnet.subnet_of(PARENT), subnet
    (block,) = two_nodes.read_map().overlapping(subnet)
    assert (block.subnet, block.label, block.owner) == (subnet, "global", "m1"), block

    # A global-mode service: one task per node, distinct addresses in the subnet, really on the interfaces.
    two_nodes.create_service(manager, "everywhere", "ov", "--mode", "global")
    tasks = {task.node: task for task in two_nodes.wait_tasks(manager, "everywhere", "ov", nodes=["m1", "w1"])}
    addresses = {name: task.addresses[0] for name, task in tasks.items()}
    assert all(len(task.addresses) == 1 for task in tasks.values()), tasks
    assert addresses["m1"] != addresses["w1"], addresses
    assert all(address.network == subnet and address.ip != gateway for address in addresses.values()), addresses
    for task in tasks.values():
        assert two_nodes[task.node].container_addresses(task.container, subnet) == list(task.addresses), task

    # Across the overlay (VXLAN between the two namespaces), both ways.
    assert manager.reaches(tasks["m1"].container, addresses["w1"].ip), "the manager's task cannot reach the worker's"
    assert worker.reaches(tasks["w1"].container, addresses["m1"].ip), "the worker's task cannot reach the manager's"

    # An attachable container on the worker: its own address, and it reaches the manager's task.
    attached = worker.run_container("attached", "ov")
    (own,) = worker.container_addresses(attached, subnet)
    assert own.ip not in {gateway, addresses["m1"].ip, addresses["w1"].ip}, own
    assert worker.reaches(attached, addresses["m1"].ip), "the attached container cannot reach the manager's task"

    # The store holds exactly what the swarm uses: the global pool, and a copy per node.
    settle(lambda: two_nodes.claims_mismatch(manager, network, ["everywhere"]), timeout=30, what="store = swarm")

    # The manager's plugin answered both the global requests and its own node-local copy;
    # the worker's plugin only ever saw its copy.
    on_manager, on_worker = manager.requests(offsets["m1"]), worker.requests(offsets["w1"])
    assert granted(on_manager, "RequestPool", f"global/{subnet}"), on_manager
    assert granted(on_manager, "RequestPool", f"local/{subnet}"), on_manager
    assert granted(on_worker, "RequestPool", f"local/{subnet}"), on_worker
    assert [r for r in on_worker if r.pool.startswith("global/")] == [], on_worker
    assert [r for r in on_manager + on_worker if not r.ok] == []


def test_manager_engine_restart_replays_every_claim_once(two_nodes: Cluster) -> None:
    manager, worker = two_nodes["m1"], two_nodes["w1"]
    network = two_nodes.overlay_served_everywhere(manager, "ov-restart", "steady", size=28)
    subnet = network.subnet
    attached = worker.run_container("attached", "ov-restart")
    (kept,) = worker.container_addresses(attached, subnet)
    settle(lambda: two_nodes.claims_mismatch(manager, network, ["steady"]), timeout=30, what="store = swarm")
    held_before = two_nodes.read_map().held(subnet, "global")

    offset, worker_offset = manager.engine.log_offset(), worker.engine.log_offset()
    manager.engine.restart()
    two_nodes.wait_ready(manager, ["m1", "w1"], timeout=90)
    tasks = {task.node: task for task in two_nodes.wait_tasks(manager, "steady", "ov-restart", nodes=["m1", "w1"])}

    # The swarm allocator re-sent the pool and its addresses explicitly; the driver granted them all.
    requests = manager.requests(offset)
    assert granted(requests, "RequestPool", f"global/{subnet}"), f"no replay of the global pool: {requests}"
    replayed = [r for r in requests if r.method == "RequestAddress" and r.pool == f"global/{subnet}"]
    assert len(replayed) >= len(held_before), f"{len(replayed)} address requests, {len(held_before)} held"
    assert manager.ipam_problems(offset) == []
    assert worker.ipam_problems(worker_offset) == []

    # Nothing duplicated: one claimed subnet, and the store holds exactly what the swarm uses.
    settle(lambda: two_nodes.claims_mismatch(manager, network, ["steady"]), timeout=60, what="store = swarm")
    assert [block.subnet for block in two_nodes.read_map().overlapping(subnet)] == [subnet]

    # The worker never noticed: its attached container kept its address and reaches the manager's new task
    # (once the restarted engine has rejoined the worker's overlay gossip: that takes Docker 30-60 s,
    # with Docker's own IPAM just the same).
    assert worker.container_addresses(attached, subnet) == [kept]
    assert worker.reaches(attached, tasks["m1"].addresses[0].ip, timeout=120)


def test_service_and_network_rm_free_every_global_and_local_claim(two_nodes: Cluster) -> None:
    manager, worker = two_nodes["m1"], two_nodes["w1"]
    network = two_nodes.overlay_served_everywhere(manager, "ov-rm", "doomed", size=27)
    subnet = network.subnet
    attached = worker.run_container("attached", "ov-rm")
    settle(lambda: two_nodes.claims_mismatch(manager, network, ["doomed"]), timeout=30, what="store = swarm")
    assert two_nodes.read_map().scopes(subnet) == {"global", "local@m1", "local@w1"}

    manager.docker("service", "rm", "doomed", check=True)
    worker.docker("rm", "-f", attached, check=True)
    two_nodes.remove_network(manager, "ov-rm")

    def freed() -> str | None:
        snapshot = two_nodes.read_map()
        return str(snapshot) if snapshot.overlapping(subnet) or snapshot.scopes(subnet) else None

    settle(freed, timeout=60, what=f"every claim on {subnet} to be released")
    # Free for anyone again: a bridge on the worker can take exactly that subnet.
    assert worker.create_bridge("br-after", "--subnet", str(subnet)) == subnet
    (block,) = two_nodes.read_map().overlapping(subnet)
    assert (block.label, block.owner) == ("local", "w1"), block


def test_bridges_on_either_node_never_overlap_overlays(two_nodes: Cluster) -> None:
    manager, worker = two_nodes["m1"], two_nodes["w1"]
    first = two_nodes.create_overlay(manager, "ov-a", "--ipam-opt", "size=28")
    two_nodes.create_service(manager, "spread", "ov-a", "--mode", "global")  # both nodes hold a local copy
    two_nodes.wait_tasks(manager, "spread", "ov-a", nodes=["m1", "w1"])

    # Bridges on both nodes and more overlays, all at once, of mixed sizes.
    bridges = [(node, f"br-{node.name}-{size}", size) for node in (manager, worker) for size in (28, 26, 29, 27)]
    overlays = [f"ov-{size}" for size in (26, 29)]
    with ThreadPoolExecutor(len(bridges) + len(overlays)) as pool:
        made = [pool.submit(node.create_bridge, name, "--ipam-opt", f"size={size}") for node, name, size in bridges]
        more = [
            pool.submit(two_nodes.create_overlay, manager, name, "--ipam-opt", f"size={name[3:]}") for name in overlays
        ]
        bridge_subnets = [future.result() for future in made]
        overlay_subnets = [first.subnet, *(future.result().subnet for future in more)]
    for (_, name, size), subnet in zip(bridges, bridge_subnets, strict=True):
        assert subnet.prefixlen == size and subnet.subnet_of(PARENT), f"{name}: {subnet}"
    assert_disjoint([*overlay_subnets, *bridge_subnets])

    # The store agrees: overlays in the global space, each bridge local to the node that made it.
    blocks = {block.subnet: block for block in two_nodes.read_map().blocks}
    assert all(blocks[subnet].label == "global" for subnet in overlay_subnets), blocks
    for (node, name, _), subnet in zip(bridges, bridge_subnets, strict=True):
        assert (blocks[subnet].label, blocks[subnet].owner) == ("local", node.name), f"{name}: {blocks[subnet]}"

    # And an overlay made afterwards avoids all of them.
    last = two_nodes.create_overlay(manager, "ov-last", "--ipam-opt", "size=28")
    assert_disjoint([last.subnet, *overlay_subnets, *bridge_subnets])
