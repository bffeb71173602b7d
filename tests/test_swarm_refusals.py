"""The pool requests of swarm networks that the driver refuses, over the app as the engine calls it.

Swarm keeps a network's subnet as the user wrote it and sends it to every node, so what
mini-ipam would read as "any free /N" (``0.0.0.0/N``, ``::/N``), or no IPv6 subnet at all,
would give each node a different subnet for one network. The real-engine side is in
``tests/swarm/test_refusals.py``; here, every form, the messages, and that nothing is claimed.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from mini_ipam.allocator import Allocator, Settings
from mini_ipam.app import create_app
from mini_ipam.driver import Driver
from mini_ipam.protocol import SERIAL_OPTION
from stores.memory import MemoryStore

SERIAL = {SERIAL_OPTION: "true"}
"""What swarm adds to the options of every pool request of a swarm network (manager's and nodes')."""


@pytest.fixture
def memory() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def client(memory: MemoryStore) -> FlaskClient:
    settings = Settings(
        parents4=(ipaddress.IPv4Network("10.99.0.0/20"),),
        parents6=(ipaddress.IPv6Network("fd00:99::/48"),),
        host_id="node-a",
    )
    return create_app(Driver(Allocator(memory, settings))).test_client()


def post(client: FlaskClient, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/IpamDriver.{method}", data=json.dumps(body))
    payload = json.loads(response.data)
    assert isinstance(payload, dict)
    return response.status_code, payload


def request_pool(client: FlaskClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"AddressSpace": "local", "Pool": "", "SubPool": "", "Options": None, "V6": False, **fields}
    return post(client, "RequestPool", body)


@pytest.mark.parametrize(
    ("space", "options"),
    [("global", SERIAL), ("global", None), ("global", {"size": "24"}), ("local", SERIAL),
     ("local", {**SERIAL, "foo": "bar"})],
    ids=["manager", "manager-without-serial", "manager-with-size", "node-copy", "node-copy-with-options"],
)  # fmt: skip
@pytest.mark.parametrize(("pool", "v6"), [("0.0.0.0/24", False), ("::/64", True), ("0.0.0.0/28", False)])
def test_the_any_free_form_is_refused_for_swarm_networks(
    client: FlaskClient, memory: MemoryStore, space: str, options: dict[str, str] | None, pool: str, v6: bool
) -> None:
    status, reply = request_pool(client, AddressSpace=space, Pool=pool, Options=options, V6=v6)
    assert status == 400, reply
    prefix = pool.split("/")[1]
    message = reply["Err"]
    assert f"--subnet {pool} (any free /{prefix}) is for local networks only" in message
    assert f"give a real IPv{6 if v6 else 4} --subnet" in message
    assert ("--ipam-opt size=" in message) is (not v6)  # swarm allocates IPv6 only from an explicit subnet
    assert set(reply) == {"Err"}
    assert memory.blocks() == [] and memory.pools() == []


def test_the_refusal_is_also_what_a_node_gets_for_a_network_made_before_it(client: FlaskClient) -> None:
    # An overlay made with 0.0.0.0/24 before the refusal existed: the manager holds a real /24, and a
    # node asks for its copy with the text swarm kept. That is refused too, never a /24 of the node's own.
    assert request_pool(client, AddressSpace="global", Pool="10.99.0.0/24", Options=SERIAL)[0] == 200
    status, reply = request_pool(client, AddressSpace="local", Pool="0.0.0.0/24", Options=SERIAL)
    assert status == 400 and "is for local networks only" in reply["Err"], reply


def test_local_networks_keep_the_any_free_form(client: FlaskClient, memory: MemoryStore) -> None:
    # Compose files rely on it where compose drops ipam.options: nothing changes for them.
    assert request_pool(client, Pool="0.0.0.0/26")[1]["Pool"] == "10.99.0.0/26"
    assert request_pool(client, Pool="0.0.0.0/26", Options={"foo": "bar"})[1]["Pool"] == "10.99.0.64/26"
    assert request_pool(client, Pool="::/64", V6=True)[1]["Pool"] == "fd00:99::/64"
    assert len(memory.blocks()) == 3


@pytest.mark.parametrize("options", [SERIAL, {**SERIAL, "size": "28"}, {**SERIAL, "size6": "80"}])
def test_an_ipv6_node_copy_without_a_subnet_is_refused(
    client: FlaskClient, memory: MemoryStore, options: dict[str, str]
) -> None:
    # The node's half of `docker network create -d overlay --ipv6` without an IPv6 --subnet: its IPv4
    # copy names the manager's subnet, its IPv6 request names none.
    assert request_pool(client, AddressSpace="global", Pool="", Options=options)[0] == 200
    copy = memory.blocks()[0].subnet
    assert request_pool(client, AddressSpace="local", Pool=str(copy), Options=options)[0] == 200
    before = (memory.blocks(), memory.pools())
    status, reply = request_pool(client, AddressSpace="local", Pool="", Options=options, V6=True)
    assert status == 400, reply
    assert reply["Err"].startswith("a swarm network with --ipv6 needs an explicit IPv6 --subnet (such as --subnet ")
    assert (memory.blocks(), memory.pools()) == before  # no IPv6 block was claimed


def test_ipv6_without_a_subnet_stays_granted_where_it_is_one_subnet(client: FlaskClient) -> None:
    # A local network (no serial option) and the manager's own request are one pool each: granted as before.
    assert request_pool(client, V6=True)[1]["Pool"] == "fd00:99::/64"
    assert request_pool(client, AddressSpace="global", V6=True, Options=SERIAL)[1]["Pool"] == "fd00:99:0:1::/64"
    # and a node copy with its IPv6 subnet given is a copy like any other
    status, reply = request_pool(client, Pool="fd00:99:0:1::/64", V6=True, Options=SERIAL)
    assert (status, reply.get("PoolID")) == (200, "local/fd00:99:0:1::/64"), reply


def test_explicit_swarm_subnets_are_granted_as_before(client: FlaskClient) -> None:
    assert request_pool(client, AddressSpace="global", Pool="10.99.4.0/24", Options=SERIAL)[0] == 200
    assert request_pool(client, AddressSpace="local", Pool="10.99.4.0/24", Options=SERIAL)[0] == 200
    assert request_pool(client, AddressSpace="global", Pool="", Options={**SERIAL, "size": "27"})[0] == 200


def test_the_managers_ipv6_subnet_is_granted_although_it_says_v6_false(client: FlaskClient) -> None:
    # swarmkit's allocator sends V6 false for every configured subnet: the subnet itself says IPv6.
    status, reply = request_pool(client, AddressSpace="global", Pool="fd12:3456:789a:1::/64", Options=SERIAL)
    assert (status, reply.get("Pool")) == (200, "fd12:3456:789a:1::/64"), reply
    status, reply = request_pool(client, AddressSpace="local", Pool="fd12:3456:789a:1::/64", Options=SERIAL, V6=True)
    assert (status, reply.get("PoolID")) == (200, "local/fd12:3456:789a:1::/64"), reply
    # a local network still says what it is: an IPv6 subnet on an IPv4 request is refused there
    status, reply = request_pool(client, Pool="fd12:3456:789a:2::/64")
    assert status == 400 and "is not an IPv4 subnet" in reply["Err"], reply
