"""``docker plugin upgrade`` to a new tag from the registry, on a running node, keeps everything.

Every node of the tier got the plugin with ``docker plugin install REGISTRY/mini-ipam:1``
(see ``conftest.py``). Here one running node, with an overlay service, an attached
container and a local bridge network of the plugin's, moves to ``mini-ipam:2`` the way an
operator would (``disable -f``, ``upgrade``, ``enable``); its settings stay, every claim in
the store stays exactly as it was, and both networks keep working: old containers still
reach each other and new ones get new, distinct addresses. Once on a state file
(``file://``), once on the two-node swarm's Redis.
"""

from __future__ import annotations

import pytest

from tests.swarm.cluster import PLUGIN, AddressMap, Cluster, Node, settle
from tests.swarm.registry import TAGS, reference

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.swarm]


def _plugin(node: Node) -> dict[str, object]:
    found = node.json("plugin", "inspect", PLUGIN)
    assert found, f"{node.name} has no plugin {PLUGIN}"
    info: dict[str, object] = found[0]
    return info


def _state_source(node: Node) -> str:
    """Where the plugin's ``state`` mount comes from on the node."""
    config = _plugin(node)["Config"]
    assert isinstance(config, dict)
    (mount,) = [m for m in config["Mounts"] if m["Name"] == "state"]
    return str(mount["Source"])


def _upgrade(node: Node, tag: str) -> None:
    """What an operator runs on the node (README: "Upgrade").

    An upgrade keeps the plugin's environment settings but puts every mount back to the
    new config's default (the engine keeps a mount's source in the config it replaces),
    so a ``state.source`` given at install is given again before the plugin starts.
    """
    state = _state_source(node)
    node.docker("plugin", "disable", "--force", PLUGIN, check=True, timeout=60)
    node.docker(
        "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", PLUGIN, reference(tag),
        check=True, timeout=300,
    )  # fmt: skip
    node.docker("plugin", "set", PLUGIN, f"state.source={state}", check=True)
    node.docker("plugin", "enable", PLUGIN, check=True, timeout=120)


def _claims(snapshot: AddressMap) -> tuple[object, ...]:
    """Everything the store holds, without the claim times (which an upgrade must not change either)."""
    blocks = sorted((str(b.subnet), b.label, b.owner, b.since) for b in snapshot.blocks)
    pools = sorted((str(subnet), scope, tuple(sorted(map(str, addresses))))
                   for (subnet, scope), addresses in snapshot.pools.items())  # fmt: skip
    return tuple(blocks), tuple(pools)


def _upgrade_keeps_claims_and_networks(cluster: Cluster, node: Node, via: Node) -> None:
    overlay = cluster.overlay_served_everywhere(via, "ov-up", "up", 28)
    attached = node.run_container("up-attached", "ov-up")
    bridge = node.create_bridge("br-up", "--ipam-opt", "size=29")
    node.run_container("br-one", "br-up")
    first_on_bridge = node.engine.address("br-one")
    settle(lambda: cluster.claims_mismatch(via, overlay, ["up"]), timeout=60, what="the store to match the swarm")
    before = cluster.read_map()
    plugin = _plugin(node)
    assert str(plugin["PluginReference"]).endswith(f"/mini-ipam:{TAGS[0]}"), plugin["PluginReference"]
    settings_before = (plugin["Settings"] or {})["Env"]  # type: ignore[index]
    state_before = _state_source(node)

    offset = node.engine.log_offset()
    _upgrade(node, TAGS[1])

    plugin = _plugin(node)
    assert plugin["Enabled"] is True
    assert str(plugin["PluginReference"]).endswith(f"/mini-ipam:{TAGS[1]}"), plugin["PluginReference"]
    assert (plugin["Settings"] or {})["Env"] == settings_before, "the upgrade lost the plugin's settings"  # type: ignore[index]
    assert _state_source(node) == state_before
    assert _claims(cluster.read_map()) == _claims(before), (
        f"the upgrade changed the store:\nbefore:\n{before}\nafter:\n{cluster.read_map()}"
    )

    # The overlay: what ran still talks, and a new container gets a new address from the upgraded plugin.
    tasks = cluster.wait_tasks(via, "up", "ov-up", nodes=[n.name for n in cluster.nodes])
    for task in tasks:
        assert node.reaches(attached, task.addresses[0].ip), f"{attached} lost {task} after the upgrade"
    node.run_container("up-attached2", "ov-up")
    settle(lambda: cluster.claims_mismatch(via, overlay, ["up"]), timeout=60, what="the store to match the swarm")
    # The local bridge: the same, inside its own subnet.
    node.run_container("br-two", "br-up")
    second_on_bridge = node.engine.address("br-two")
    assert second_on_bridge.network == first_on_bridge.network == bridge, (first_on_bridge, second_on_bridge)
    assert second_on_bridge.ip != first_on_bridge.ip
    assert node.engine.ping("br-two", first_on_bridge.ip)
    # The restarted plugin says again what it says at every start on the tier's Redis (no append-only file).
    problems = [line for line in node.ipam_problems(offset) if "appendonly is off" not in line]
    assert problems == [], problems


def test_upgrade_on_a_state_file_keeps_every_claim(one_node: Cluster) -> None:
    node = one_node["s1"]
    _upgrade_keeps_claims_and_networks(one_node, node, via=node)


def test_upgrade_of_a_worker_on_redis_keeps_every_claim(two_nodes: Cluster) -> None:
    _upgrade_keeps_claims_and_networks(two_nodes, two_nodes["w1"], via=two_nodes["m1"])
