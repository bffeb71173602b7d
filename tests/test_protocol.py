"""The wire protocol, posted exactly as real engines send it (see the recorded bodies in the notes)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from mini_ipam.allocator import Allocator, Settings
from mini_ipam.app import create_app
from mini_ipam.driver import Driver
from mini_ipam.protocol import CONTENT_TYPE, MAX_BODY
from stores.memory import MemoryStore
from tests.helpers import addresses_of

ENGINE_HEADERS = {"Accept": "application/vnd.docker.plugins.v1.2+json"}  # and no Content-Type


@pytest.fixture
def memory() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def client(memory: MemoryStore) -> FlaskClient:
    settings = Settings(
        parents4=(ipaddress.IPv4Network("10.99.0.0/24"),),
        parents6=(ipaddress.IPv6Network("fd00:99::/48"),),
        host_id="host-a",
    )
    return create_app(Driver(Allocator(memory, settings))).test_client()


def post(client: FlaskClient, method: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    response = client.post(f"/{method}", data=data, headers=ENGINE_HEADERS)
    assert response.content_type == CONTENT_TYPE
    payload = json.loads(response.data)
    assert isinstance(payload, dict)
    return response.status_code, payload


def request_pool(client: FlaskClient, **fields: Any) -> tuple[int, dict[str, Any]]:
    body = {"AddressSpace": "local", "Pool": "", "SubPool": "", "Options": None, "V6": False}
    body.update(fields)
    return post(client, "IpamDriver.RequestPool", body)


def test_activate_with_an_empty_body(client: FlaskClient) -> None:
    assert post(client, "Plugin.Activate") == (200, {"Implements": ["IpamDriver"]})


def test_capabilities_and_address_spaces(client: FlaskClient) -> None:
    assert post(client, "IpamDriver.GetCapabilities") == (
        200,
        {"RequiresMACAddress": False, "RequiresRequestReplay": False},
    )
    assert post(client, "IpamDriver.GetDefaultAddressSpaces") == (
        200,
        {"LocalDefaultAddressSpace": "local", "GlobalDefaultAddressSpace": "global"},
    )


def test_recorded_network_lifecycle(client: FlaskClient, memory: MemoryStore) -> None:
    # docker network create --ipam-driver mini --ipam-opt size=29 foo
    status, pool = post(
        client,
        "IpamDriver.RequestPool",
        {"AddressSpace": "local", "Pool": "", "SubPool": "", "Options": {"size": "29"}, "V6": False},
    )
    assert status == 200
    assert pool == {"PoolID": "local/10.99.0.0/29", "Pool": "10.99.0.0/29", "Data": {}}
    gateway = {"PoolID": pool["PoolID"], "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}
    assert post(client, "IpamDriver.RequestAddress", gateway) == (200, {"Address": "10.99.0.1/29", "Data": {}})
    # docker run --network foo ... then the container exits
    container = {"PoolID": pool["PoolID"], "Address": "", "Options": None}
    assert post(client, "IpamDriver.RequestAddress", container) == (200, {"Address": "10.99.0.2/29", "Data": {}})
    assert post(client, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.99.0.2"}) == (200, {})
    # docker network rm foo
    assert post(client, "IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": "10.99.0.1"}) == (200, {})
    assert post(client, "IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == (200, {})
    assert memory.blocks() == []


def test_original_drivers_size_option_and_engine_29_any_subnet(client: FlaskClient) -> None:
    assert request_pool(client, Options={"mini.cidr_mask_length": "27"})[1]["Pool"] == "10.99.0.0/27"
    assert request_pool(client, Pool="0.0.0.0/26")[1]["Pool"] == "10.99.0.64/26"
    assert request_pool(client, Pool="::/64", V6=True)[1]["Pool"] == "fd00:99::/64"


def test_ipv6_pool_uses_size6(client: FlaskClient) -> None:
    status, pool = request_pool(client, V6=True, Options={"size": "28", "size6": "80"})
    assert (status, pool["Pool"], pool["PoolID"]) == (200, "fd00:99::/80", "local/fd00:99::/80")


def test_identical_dynamic_requests_get_different_subnets(client: FlaskClient) -> None:
    # The engine's host-route retry loop repeats the same request until it gets a usable pool.
    pools = [request_pool(client, Options={"size": "28"})[1]["Pool"] for _ in range(16)]
    assert len(set(pools)) == 16
    status, reply = request_pool(client, Options={"size": "28"})
    assert status == 409
    assert reply["Err"] == "no free /28 left in 10.99.0.0/24"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"Options": {"size": "31"}}, "size /31 is not possible: IPv4 sizes range from /24 to /30"),
        ({"Options": {"size": "16"}}, "size /16 is not possible"),
        ({"Options": {"size": "abc"}}, "ipam-opt size='abc' is not a prefix length"),
        ({"Options": {"size": ""}}, "is not a prefix length"),
        ({"SubPool": "10.1.0.0/25"}, "SubPool (--ip-range) needs Pool (--subnet)"),
        ({"Pool": "10.1.0.0/24", "SubPool": "10.2.0.0/25"}, "ip-range 10.2.0.0/25 is not inside subnet 10.1.0.0/24"),
        ({"Pool": "10.1.0.5/24"}, "has host bits set"),
        ({"Pool": "banana"}, "Pool 'banana' is not a subnet"),
        ({"Pool": "10.1.0.0/31"}, "too small"),
        ({"Pool": "10.1.0.0/24", "Options": {"size": "28"}}, "size /28 contradicts the requested subnet 10.1.0.0/24"),
        ({"Pool": "fd00::/64"}, "is not an IPv4 subnet"),
        ({"Pool": "10.1.0.0/24", "V6": True}, "is not an IPv6 subnet"),
        ({"AddressSpace": "elsewhere"}, "unknown address space 'elsewhere'"),
        ({"AddressSpace": None}, "AddressSpace is required"),
        ({"V6": "yes"}, "V6 must be true or false"),
        ({"Options": ["size"]}, "Options must be an object of strings"),
        ({"Options": {"size": 28}}, "Options must be an object of strings"),
        ({"Pool": 10}, "Pool must be a string"),
    ],
)
def test_bad_pool_requests_are_refused_and_change_nothing(
    client: FlaskClient, memory: MemoryStore, fields: dict[str, Any], message: str
) -> None:
    status, reply = request_pool(client, **fields)
    assert status == 400
    assert message in reply["Err"]
    assert memory.blocks() == []


def test_overlapping_subnet_names_the_holder(client: FlaskClient) -> None:
    assert request_pool(client, Pool="10.1.0.0/24")[0] == 200
    status, reply = request_pool(client, Pool="10.1.0.128/25")
    assert status == 409
    assert reply["Err"].startswith(
        "subnet 10.1.0.128/25 overlaps 10.1.0.0/24, held in address space local by host host-a since "
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "PoolID is required"),
        ({"PoolID": "local/10.1.0.0"}, "malformed PoolID"),
        ({"PoolID": "nowhere/10.1.0.0/24"}, "malformed PoolID"),
        ({"PoolID": "local/10.1.0.0/24", "Address": "10.1.1.1"}, "not inside pool subnet"),
        ({"PoolID": "local/10.1.0.0/24", "Address": "10.1.0.0"}, "reserved"),
        ({"PoolID": "local/10.1.0.0/24", "Address": "10.1.0.255"}, "reserved"),
        ({"PoolID": "local/10.1.0.0/24", "Address": "10.1.0.7/24"}, "is not an IP address"),
        ({"PoolID": "local/10.1.0.0/24", "Address": "fd00::1"}, "not inside pool subnet"),
        ({"PoolID": "local/10.1.0.0/24", "Options": "gateway"}, "Options must be an object"),
    ],
)
def test_bad_address_requests_are_refused(
    client: FlaskClient, memory: MemoryStore, body: dict[str, Any], message: str
) -> None:
    request_pool(client, Pool="10.1.0.0/24")
    status, reply = post(client, "IpamDriver.RequestAddress", body)
    assert status == 400
    assert message in reply["Err"]
    assert addresses_of(memory, ipaddress.ip_network("10.1.0.0/24"), "local@host-a") == []


def test_unknown_pool_and_address_releases_are_errors(client: FlaskClient) -> None:
    status, reply = post(client, "IpamDriver.ReleasePool", {"PoolID": "local/10.3.0.0/24"})
    assert (status, reply["Err"]) == (400, "pool local/10.3.0.0/24 is not held by host-a")
    status, reply = post(client, "IpamDriver.RequestAddress", {"PoolID": "local/10.3.0.0/24", "Address": ""})
    assert (status, reply["Err"]) == (400, "pool local/10.3.0.0/24 is not known here")
    request_pool(client, Pool="10.3.0.0/24")
    status, reply = post(client, "IpamDriver.ReleaseAddress", {"PoolID": "local/10.3.0.0/24", "Address": "10.3.0.9"})
    assert (status, reply["Err"]) == (400, "address 10.3.0.9 is not allocated in pool local/10.3.0.0/24")


def test_explicit_address_in_use_is_refused(client: FlaskClient) -> None:
    request_pool(client, Pool="10.3.0.0/24")
    body = {"PoolID": "local/10.3.0.0/24", "Address": "10.3.0.9", "Options": None}
    assert post(client, "IpamDriver.RequestAddress", body) == (200, {"Address": "10.3.0.9/24", "Data": {}})
    status, reply = post(client, "IpamDriver.RequestAddress", body)
    assert (status, reply["Err"]) == (409, "address 10.3.0.9 is already in use in pool local/10.3.0.0/24")


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[]", b'"text"', b"null", b"\xff\xfe\x00garbage", b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"],
    ids=["truncated", "array", "string", "null", "not-utf8", "deeply-nested"],
)
def test_unparseable_bodies_get_a_json_error(client: FlaskClient, raw: bytes) -> None:
    status, reply = post(client, "IpamDriver.RequestPool", raw=raw)
    assert status == 400
    assert "request body" in reply["Err"]


def test_oversized_body_is_refused(client: FlaskClient, memory: MemoryStore) -> None:
    body = {"AddressSpace": "local", "Pool": "", "Options": {"pad": "x" * MAX_BODY}}
    status, reply = post(client, "IpamDriver.RequestPool", body)
    assert status == 413
    assert "Err" in reply
    assert memory.blocks() == []


def test_unknown_paths_are_404_with_a_json_error(client: FlaskClient) -> None:
    assert post(client, "IpamDriver.Nonsense")[0] == 404
    assert post(client, "NetworkDriver.CreateNetwork")[0] == 404
    response = client.get("/Plugin.Activate")
    assert response.status_code == 405
    assert "Err" in json.loads(response.data)


def test_an_unexpected_exception_still_answers(client: FlaskClient, memory: MemoryStore, monkeypatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(memory, "open_pool", explode)
    status, reply = request_pool(client)
    assert status == 500
    assert reply["Err"] == "internal error in mini-ipam (RuntimeError); see the driver's log"
