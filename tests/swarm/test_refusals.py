"""Swarm networks the driver refuses, on real engines, and what a refusal leaves behind.

* ``--subnet 0.0.0.0/N`` (or ``::/N``) is "any free /N" to mini-ipam, which only a local
  network can use: swarm keeps the user's ``0.0.0.0/N`` as the network's subnet and sends
  it to every node, so each node got a /N of its own, its gateway request was refused and
  the manager's /N stayed claimed after ``network rm``. Now the manager's global request is
  refused, with a message that says so, nothing is claimed, and ``network rm`` is clean.
* ``--ipv6`` without an IPv6 ``--subnet``: the manager allocates IPv4 only, and each node
  carved an IPv6 subnet of its own for the same overlay. Now the node's request is refused
  with an error that asks for an explicit IPv6 ``--subnet``, which the container's start
  shows, and the node keeps nothing of it; with the subnet given, the same network works.

On the one-node ``file://`` swarm: its plugin gets both the manager's and the node's requests.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from tests.e2e.engines import IMAGE, SLEEPER
from tests.swarm.cluster import DRIVER, PLUGIN, Cluster, Request, settle

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.swarm]


def _empty(cluster: Cluster) -> str | None:
    snapshot = cluster.read_map()
    return None if not snapshot.blocks and not snapshot.pools else str(snapshot)


def _refused(requests: list[Request], method: str) -> list[Request]:
    return [r for r in requests if r.method == method and not r.ok]


@pytest.mark.parametrize(("subnet", "args"), [("0.0.0.0/24", ()), ("::/64", ("--ipv6",))], ids=["ipv4", "ipv6"])
def test_an_any_free_subnet_overlay_is_refused_and_leaves_nothing_claimed(
    one_node: Cluster, subnet: str, args: tuple[str, ...]
) -> None:
    node = one_node["s1"]
    offset = node.engine.log_offset()
    node.docker(
        "network", "create", "-d", "overlay", "--attachable", "--ipam-driver", DRIVER, *args, "--subnet", subnet,
        "ov-any", check=True,
    )  # fmt: skip

    def refused() -> str | None:
        requests = node.requests(offset)
        found = [r for r in _refused(requests, "RequestPool") if r.pool == subnet]
        return None if found else f"no refusal of {subnet} yet: {requests}"

    settle(refused, timeout=30, what=f"the driver to refuse the swarm network's {subnet}")
    (refusal, *_) = [r for r in _refused(node.requests(offset), "RequestPool") if r.pool == subnet]
    prefix = subnet.split("/")[1]
    assert f"--subnet {subnet} (any free /{prefix}) is for local networks only" in refusal.outcome, refusal
    assert "give a real IPv" in refusal.outcome, refusal
    assert refusal.outcome.startswith("400 "), refusal
    assert _empty(one_node) is None, "a refused swarm network left claims:\n" + str(one_node.read_map())

    one_node.remove_network(node, "ov-any")
    settle(lambda: _empty(one_node), timeout=30, what="the store to hold nothing after network rm")
    requests = node.requests(offset)
    others = [r for r in requests if not r.ok and r.method != "RequestPool"]
    assert others == [], f"the removal of the refused network was refused: {others}"
    assert [r for r in requests if r.ok and r.method == "RequestPool"] == [], requests


def test_an_ipv6_overlay_without_an_ipv6_subnet_is_refused_on_the_node(one_node: Cluster) -> None:
    node = one_node["s1"]
    offset = node.engine.log_offset()
    network = one_node.create_overlay(node, "ov-six", "--ipv6", "--ipam-opt", "size=28")
    subnet = network.subnet  # the manager's IPv4 allocation; it made no IPv6 one
    assert network.subnets(6) == [], network.raw["IPAM"]

    run = node.docker("run", "-d", "--name", "six1", "--network", "ov-six", IMAGE, "sh", "-c", SLEEPER, timeout=90)
    # The attachment fails on the node; the CLI only says "attaching to network failed": the reason
    # is in the engine's log, as the plugin's refusal.
    assert run.returncode != 0, f"a container started on an IPv6 overlay with no IPv6 subnet: {run.stdout}"
    refusals = _refused(node.requests(offset), "RequestPool")
    assert refusals, node.requests(offset)
    assert all(r.pool == "-" and "needs an explicit IPv6 --subnet" in r.outcome for r in refusals), refusals

    # The node keeps nothing: no IPv6 subnet, and its IPv4 copy is rolled back; the manager's pool stays.
    def only_the_global_pool() -> str | None:
        snapshot = one_node.read_map()
        blocks = [(block.subnet, block.label) for block in snapshot.blocks]
        ok = blocks == [(subnet, "global")] and {scope for _, scope in snapshot.pools} == {"global"}
        return None if ok else str(snapshot)

    settle(only_the_global_pool, timeout=30, what="the node to keep nothing of the refused network")
    node.docker("rm", "-f", "six1")
    one_node.remove_network(node, "ov-six")
    settle(lambda: _empty(one_node), timeout=30, what="the store to hold nothing after network rm")

    # What the error asks for works: with an IPv6 --subnet the manager allocates it (its request says V6 false),
    # and the node asks for copies of the manager's two subnets, never a subnet of its own; all granted.
    six = ipaddress.IPv6Network("fd12:3456:789a:1::/64")
    offset = node.engine.log_offset()
    given = one_node.create_overlay(node, "ov-six2", "--ipv6", "--subnet", "198.19.100.0/28", "--subnet", str(six))
    assert given.subnets(6) == [six], given.raw["IPAM"]
    run = node.docker("run", "-d", "--name", "six2", "--network", "ov-six2", IMAGE, "sh", "-c", SLEEPER, timeout=90)
    requests = node.requests(offset)
    assert [r for r in requests if not r.ok] == [] and node.ipam_problems(offset) == [], (
        f"{run.stderr}\n" + "\n".join(map(str, requests)) + "\n" + "\n".join(node.ipam_problems(offset))
    )
    copies = {r.pool for r in requests if r.method == "RequestPool" and r.pool.startswith("local/")}
    assert copies == {"local/198.19.100.0/28", f"local/{six}"}, requests
    snapshot = one_node.read_map()
    assert sorted(str(block.subnet) for block in snapshot.blocks) == ["198.19.100.0/28", str(six)], snapshot
    assert {block.label for block in snapshot.blocks} == {"global"}, snapshot
    # On 20.10 the container runs (with one address: swarm gives an attachment one, from its IPv4 pool);
    # engine 28 here fails the attachment after IPAM granted everything (and rolls the node copies back).
    if run.returncode == 0:
        assert snapshot.scopes(six) == {"global", "local@s1"}, snapshot

    # mini-ipam ls, against this engine, names the network of every pool it has (global, IPv6, the copies).
    state = node.engine.directory.parent / "state" / "state.json"  # the file_swarm fixture's state file
    listing = subprocess.run(
        [sys.executable, "-m", "mini_ipam", "ls", "--store", f"file://{state}",
         "--docker", f"unix://{node.engine.socket}", "--driver", PLUGIN, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    names = {pool["pool_id"]: pool["network"] for pool in json.loads(listing.stdout)["pools"]}
    ours = {pool_id: name for pool_id, name in names.items() if "198.19.100.0/28" in pool_id or str(six) in pool_id}
    assert {"global/198.19.100.0/28", f"global/{six}"} <= set(ours), names
    assert set(ours.values()) == {"ov-six2"}, names
