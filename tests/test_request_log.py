"""The request log: what each protocol call logs, and at which level.

* A RequestPool's line says what was asked (address space, family, subnet, ip-range, size,
  the option keys) next to what was granted or why it was refused, so that "I asked for a
  /29 and got a /28" shows in the log itself.
* Granted GetCapabilities and GetDefaultAddressSpaces are logged at debug: engines 26 and
  later ask them again before every network change (28 two or three times per create).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from mini_ipam import protocol
from mini_ipam.allocator import Allocator, Settings
from mini_ipam.app import create_app
from mini_ipam.driver import Driver
from mini_ipam.logs import FIELDS, JsonFormatter
from stores.memory import MemoryStore

LOGGER = "mini_ipam.requests"


@pytest.fixture
def client() -> FlaskClient:
    settings = Settings(parents4=(ipaddress.IPv4Network("10.77.0.0/24"),), host_id="host-a")
    return create_app(Driver(Allocator(MemoryStore(), settings))).test_client()


def post(client: FlaskClient, method: str, body: dict[str, Any] | None = None) -> int:
    return client.post(f"/IpamDriver.{method}", data=b"" if body is None else json.dumps(body)).status_code


def lines(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and (level is None or r.levelno == level)]


def test_capabilities_and_address_spaces_are_logged_at_debug(caplog: pytest.LogCaptureFixture,
                                                             client: FlaskClient) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, LOGGER)
    for _ in range(3):  # what engine 28 sends around one network create
        assert post(client, protocol.GET_DEFAULT_ADDRESS_SPACES) == 200
    assert post(client, protocol.GET_CAPABILITIES) == 200
    assert post(client, protocol.REQUEST_POOL, protocol.request_pool(options={"size": "29"})) == 200
    methods = [(r.levelname, r.getMessage().split()[0]) for r in lines(caplog)]
    assert methods == [("DEBUG", "GetDefaultAddressSpaces")] * 3 + [("DEBUG", "GetCapabilities"),
                                                                     ("INFO", "RequestPool")]  # fmt: skip


def test_at_info_a_network_create_is_one_line(caplog: pytest.LogCaptureFixture, client: FlaskClient) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    post(client, protocol.GET_CAPABILITIES)
    post(client, protocol.GET_DEFAULT_ADDRESS_SPACES)
    post(client, protocol.REQUEST_POOL, protocol.request_pool(options={"size": "29"}))
    post(client, protocol.REQUEST_ADDRESS, protocol.request_address("local/10.77.0.0/29", gateway=True))
    assert [r.getMessage().split()[0] for r in lines(caplog)] == ["RequestPool"]


def test_the_request_pool_line_says_what_was_asked_and_what_was_granted(
    caplog: pytest.LogCaptureFixture, client: FlaskClient
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    post(client, protocol.REQUEST_POOL, protocol.request_pool(options={"size": "29", "com.example.note": "x"}))
    post(client, protocol.REQUEST_POOL, protocol.request_pool(pool="10.77.0.64/26", sub_pool="10.77.0.96/27"))
    post(client, protocol.REQUEST_POOL, protocol.request_pool(pool="0.0.0.0/28"))
    granted, explicit, any_free = (r.getMessage() for r in lines(caplog, logging.INFO))
    assert granted.startswith("RequestPool pool=local/10.77.0.0/29 ok [asked space=local v6=false subnet=- "
                              "ip-range=- size=29 options=com.example.note,size] ")  # fmt: skip
    assert explicit.startswith("RequestPool pool=local/10.77.0.64/26/10.77.0.96/27 ok [asked space=local v6=false "
                               "subnet=10.77.0.64/26 ip-range=10.77.0.96/27 size=- options=-] ")  # fmt: skip
    assert any_free.startswith("RequestPool pool=local/10.77.0.16/28 ok [asked space=local v6=false "
                               "subnet=0.0.0.0/28 ip-range=- size=- options=-] ")  # fmt: skip
    assert granted.endswith("ms") and explicit.endswith("ms")


def test_a_refused_request_pool_says_what_was_asked(caplog: pytest.LogCaptureFixture, client: FlaskClient) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    assert post(client, protocol.REQUEST_POOL, protocol.request_pool(options={"size": "22"})) == 400
    swarm = protocol.request_pool("global", pool="0.0.0.0/24", options={protocol.SERIAL_OPTION: "true"})
    assert post(client, protocol.REQUEST_POOL, swarm) == 400
    too_wide, any_free = (r.getMessage() for r in lines(caplog))
    assert too_wide.startswith("RequestPool pool=- 400 size /22 is not possible")
    assert "[asked space=local v6=false subnet=- ip-range=- size=22 options=size]" in too_wide
    assert any_free.startswith("RequestPool pool=0.0.0.0/24 400 --subnet 0.0.0.0/24 (any free /24) is for local")
    assert any_free.endswith("ms") and f"options={protocol.SERIAL_OPTION}] " in any_free


def test_ipv6_requests_show_the_ipv6_size(caplog: pytest.LogCaptureFixture, client: FlaskClient) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    post(client, protocol.REQUEST_POOL, protocol.request_pool(options={"size": "28", "size6": "80"}, v6=True))
    (line,) = lines(caplog)
    assert "[asked space=local v6=true subnet=- ip-range=- size=80 options=size,size6]" in line.getMessage()


def test_the_json_line_carries_what_was_asked_as_fields(caplog: pytest.LogCaptureFixture, client: FlaskClient) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    post(client, protocol.REQUEST_POOL, protocol.request_pool(options={"size": "30"}))
    (record,) = lines(caplog)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["pool"] == "local/10.77.0.0/30" and entry["status"] == 200
    assert entry["asked"] == {"space": "local", "v6": "false", "subnet": "-", "ip-range": "-", "size": "30",
                              "options": "size"}  # fmt: skip
    assert getattr(record, FIELDS)["asked"] == entry["asked"]


@pytest.mark.parametrize(
    "body",
    [{}, {"AddressSpace": 7, "Pool": ["x"], "Options": "size=28", "V6": "yes"}, {"Options": {"size": None}}],
)
def test_a_malformed_request_pool_is_still_summarized(body: dict[str, Any]) -> None:
    summary = protocol.pool_request_summary(body)
    assert set(summary) == {"space", "v6", "subnet", "ip-range", "size", "options"}
    assert all(isinstance(value, str) and value for value in summary.values()), summary
