"""The libnetwork remote IPAM protocol: the whole wire contract in one place.

Paths, the activation manifest, the content type, the option keys the engine
sends, and the shape of each method's request and reply (as ``TypedDict``), with
builders for the bodies a client sends and checked readers for the fields a
server reads. The driver, the app, the operator commands' client, the benchmarks
and the tests all speak the protocol through this module.

As real engines speak it (the recorded bodies are in ``tests/test_protocol.py``):
every request key is always present, ``Options``/``Data`` may be null, the engine
sends no Content-Type and empty bodies for calls without arguments.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Final, TypedDict

from mini_ipam.errors import InvalidRequest

Json = dict[str, Any]

CONTENT_TYPE: Final = "application/vnd.docker.plugins.v1.1+json"
"""The content type of every reply (the one docker/go-plugins-helpers uses)."""
ACCEPT: Final = "application/vnd.docker.plugins.v1.2+json"
"""What the engine sends as Accept."""
MAX_BODY: Final = 64 * 1024
"""Larger requests are refused (413): real ones are a few hundred bytes."""

ACTIVATE: Final = "Plugin.Activate"
MANIFEST: Final = {"Implements": ["IpamDriver"]}
"""The reply to Plugin.Activate."""

GET_CAPABILITIES: Final = "GetCapabilities"
GET_DEFAULT_ADDRESS_SPACES: Final = "GetDefaultAddressSpaces"
REQUEST_POOL: Final = "RequestPool"
RELEASE_POOL: Final = "ReleasePool"
REQUEST_ADDRESS: Final = "RequestAddress"
RELEASE_ADDRESS: Final = "ReleaseAddress"
METHODS: Final = (GET_CAPABILITIES, GET_DEFAULT_ADDRESS_SPACES, REQUEST_POOL, RELEASE_POOL, REQUEST_ADDRESS,
                  RELEASE_ADDRESS)  # fmt: skip
DRIVER_PREFIX: Final = "IpamDriver."


def path(method: str) -> str:
    """The URL path of a method: ``/IpamDriver.RequestPool``, or ``/Plugin.Activate``."""
    return f"/{method}" if method == ACTIVATE else f"/{DRIVER_PREFIX}{method}"


# -- options the engine passes on --------------------------------------------

SIZE_OPTIONS: Final = ("size", "mini.cidr_mask_length")
"""IPv4 size options (``--ipam-opt``); the second is the original Go driver's key."""
SIZE6_OPTION: Final = "size6"
GATEWAY_OPTION: Final = "RequestAddressType"
GATEWAY_MARKER: Final = "com.docker.network.gateway"
"""``Options[GATEWAY_OPTION]`` of the gateway's RequestAddress."""
SERIAL_OPTION: Final = "com.docker.network.ipam.serial"
"""Swarm's "hand addresses out round-robin" option (value ``"true"``)."""

_SIZE_TEXT = re.compile(r"[0-9]{1,3}")
"""A prefix length: ASCII digits only (str.isdigit() also takes "²" and other scripts' digits)."""


# -- the shapes of requests and replies ----------------------------------------


class Capabilities(TypedDict):
    RequiresMACAddress: bool
    RequiresRequestReplay: bool


class AddressSpaces(TypedDict):
    LocalDefaultAddressSpace: str
    GlobalDefaultAddressSpace: str


class RequestPoolRequest(TypedDict):
    AddressSpace: str
    Pool: str
    SubPool: str
    Options: dict[str, str] | None
    V6: bool


class RequestPoolReply(TypedDict):
    PoolID: str
    Pool: str
    Data: dict[str, str]


class ReleasePoolRequest(TypedDict):
    PoolID: str


class RequestAddressRequest(TypedDict):
    PoolID: str
    Address: str
    Options: dict[str, str] | None


class RequestAddressReply(TypedDict):
    Address: str
    Data: dict[str, str]


class ReleaseAddressRequest(TypedDict):
    PoolID: str
    Address: str


class Refusal(TypedDict):
    Err: str


# -- building bodies (clients: the operator commands, the benchmarks, the tests) ----


def request_pool(
    space: str = "local", pool: str = "", sub_pool: str = "", options: dict[str, str] | None = None, v6: bool = False
) -> RequestPoolRequest:
    """A RequestPool body, every key present as the engine sends it."""
    return {"AddressSpace": space, "Pool": pool, "SubPool": sub_pool, "Options": options, "V6": v6}


def release_pool(pool_id: str) -> ReleasePoolRequest:
    """A ReleasePool body."""
    return {"PoolID": pool_id}


def request_address(
    pool_id: str, address: str = "", options: dict[str, str] | None = None, *, gateway: bool = False
) -> RequestAddressRequest:
    """A RequestAddress body; ``gateway`` adds the gateway marker to ``options``."""
    if gateway:
        options = {**(options or {}), GATEWAY_OPTION: GATEWAY_MARKER}
    return {"PoolID": pool_id, "Address": address, "Options": options}


def release_address(pool_id: str, address: str) -> ReleaseAddressRequest:
    """A ReleaseAddress body."""
    return {"PoolID": pool_id, "Address": address}


# -- reading bodies (the server) ---------------------------------------------------


def parse_body(data: bytes) -> Json:
    """The request's JSON object; an empty body is an empty object. InvalidRequest for anything else."""
    if not data or data.isspace():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def string(body: Json, key: str, *, required: bool = False) -> str:
    """A string field; null or absent reads as "" unless ``required``."""
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string, not {type(value).__name__}")
    if required and not value:
        raise InvalidRequest(f"{key} must not be empty")
    return value


def boolean(body: Json, key: str) -> bool:
    """A boolean field; null or absent reads as False."""
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, not {value!r}")
    return value


def options(body: Json) -> dict[str, str]:
    """The ``Options`` object (strings only); null or absent reads as empty."""
    value = body.get("Options")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest("Options must be an object of strings")
    return value


def size_option(given: dict[str, str], v6: bool) -> int | None:
    """The prefix length a network asks for with ``--ipam-opt size=N`` (or ``size6``), if it does."""
    for key in (SIZE6_OPTION,) if v6 else SIZE_OPTIONS:
        if key in given:
            text = given[key].strip().removeprefix("/")
            if not _SIZE_TEXT.fullmatch(text):
                raise InvalidRequest(f"ipam-opt {key}={given[key]!r} is not a prefix length such as 28")
            return int(text)
    return None


def pool_request_summary(body: Json) -> dict[str, str]:
    """What a RequestPool body asks for, for its log line: never raises, whatever the body holds.

    ``space``, ``v6``, ``subnet`` (the Pool), ``ip-range`` (the SubPool), ``size`` (the size
    option of the family asked for, as written) and ``options`` (the option keys, sorted);
    "-" for what it does not give.
    """
    given = body.get("Options")
    v6 = body.get("V6") is True
    size = "-"
    keys = "-"
    if isinstance(given, dict):
        for key in (SIZE6_OPTION,) if v6 else SIZE_OPTIONS:
            if key in given:
                size = str(given[key])
                break
        keys = ",".join(sorted(str(key) for key in given)) or "-"
    elif given is not None:
        keys = f"({type(given).__name__})"
    return {
        "space": str(body.get("AddressSpace") or "-"),
        "v6": "true" if v6 else "false",
        "subnet": str(body.get("Pool") or "-"),
        "ip-range": str(body.get("SubPool") or "-"),
        "size": size,
        "options": keys,
    }


def is_any_subnet(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether a ``Pool`` of the ``0.0.0.0/N`` or ``::/N`` form asks for any free /N rather than that subnet.

    Engine 29 passes ``--subnet /N`` on this way, and compose files use it where compose
    drops ``ipam.options``; ``/0`` is no size, so it is not one.
    """
    return int(subnet.network_address) == 0 and subnet.prefixlen > 0


def is_gateway(given: dict[str, str]) -> bool:
    """Whether a RequestAddress's options mark it as the network's gateway."""
    return given.get(GATEWAY_OPTION) == GATEWAY_MARKER


def is_serial(given: dict[str, str]) -> bool:
    """Whether a RequestAddress's options ask for round-robin (swarm)."""
    return given.get(SERIAL_OPTION) == "true"
