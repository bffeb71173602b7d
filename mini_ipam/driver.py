"""The libnetwork remote IPAM protocol, mapped onto the Allocator.

Wire names (``PoolID``, ``SubPool``, ``RequestAddressType`` ...) stop here: every
method decodes and checks its JSON request, calls the Allocator, and encodes the
reply. A request that does not decode is an ``InvalidRequest`` and changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from mini_ipam.allocator import GLOBAL, LOCAL, Allocator, PoolRequest
from mini_ipam.errors import InvalidRequest
from mini_ipam.pool_id import PoolId, parse_address, parse_network
from stores import Address, Network

Json = dict[str, Any]

GATEWAY_OPTION = "RequestAddressType"
GATEWAY_MARKER = "com.docker.network.gateway"
SERIAL_OPTION = "com.docker.network.ipam.serial"
SIZE_OPTIONS = ("size", "mini.cidr_mask_length")
"""IPv4 size options; the second is the original Go driver's key."""
SIZE6_OPTION = "size6"
SIZE_TEXT = re.compile(r"[0-9]{1,3}")
"""A prefix length: ASCII digits only (str.isdigit() also takes "²" and other scripts' digits)."""


class Driver:
    """Answers the IpamDriver methods with plain JSON-able dicts."""

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def get_capabilities(self, request: Json) -> Json:
        """State is durable, so the engine must not replay requests at start-up."""
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def get_default_address_spaces(self, request: Json) -> Json:
        """Local networks use ``local``; swarm networks ``global``."""
        return {"LocalDefaultAddressSpace": LOCAL, "GlobalDefaultAddressSpace": GLOBAL}

    def request_pool(self, request: Json) -> Json:
        """Claim a subnet: ``Pool`` exactly, or any free one of the requested size."""
        space = _string(request, "AddressSpace", required=True)
        v6 = _boolean(request, "V6")
        options = _options(request)
        pool_text = _string(request, "Pool")
        sub_pool_text = _string(request, "SubPool")
        if sub_pool_text and not pool_text:
            raise InvalidRequest("SubPool (--ip-range) needs Pool (--subnet)")
        size = _size(options, v6)
        subnet = _network(pool_text, "Pool") if pool_text else None
        if subnet is not None and int(subnet.network_address) == 0 and subnet.prefixlen > 0:
            # Engine 29 passes `--subnet /N` on as 0.0.0.0/N (or ::/N): any free /N.
            if size is not None and size != subnet.prefixlen:
                raise InvalidRequest(f"size /{size} contradicts the requested subnet {pool_text}")
            if subnet.version != (6 if v6 else 4):
                raise InvalidRequest(f"subnet {pool_text} is not an IPv{6 if v6 else 4} subnet")
            size = subnet.prefixlen
            subnet = None
        ip_range = _network(sub_pool_text, "SubPool") if sub_pool_text else None
        if ip_range is not None and subnet is None:
            raise InvalidRequest("an ip-range needs an explicit subnet (--subnet) that contains it")
        allocated = self.allocator.request_pool(
            PoolRequest(space=space, v6=v6, subnet=subnet, ip_range=ip_range, size=size)
        )
        return {"PoolID": str(allocated.pool_id), "Pool": str(allocated.subnet), "Data": {}}

    def release_pool(self, request: Json) -> Json:
        """Release a pool and every address in it."""
        self.allocator.release_pool(_pool_id(request))
        return {}

    def request_address(self, request: Json) -> Json:
        """Claim an address: the requested one, the gateway, or the next free one."""
        pool_id = _pool_id(request)
        options = _options(request)
        text = _string(request, "Address")
        address = _address(text) if text else None
        interface = self.allocator.request_address(
            pool_id,
            address,
            gateway=options.get(GATEWAY_OPTION) == GATEWAY_MARKER,
            serial=options.get(SERIAL_OPTION) == "true",
        )
        return {"Address": str(interface), "Data": {}}

    def release_address(self, request: Json) -> Json:
        """Release one address of a pool."""
        pool_id = _pool_id(request)
        text = _string(request, "Address", required=True)
        self.allocator.release_address(pool_id, _address(text))
        return {}


def _string(request: Json, key: str, *, required: bool = False) -> str:
    value = request.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string, not {type(value).__name__}")
    if required and not value:
        raise InvalidRequest(f"{key} must not be empty")
    return value


def _boolean(request: Json, key: str) -> bool:
    value = request.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, not {value!r}")
    return value


def _options(request: Json) -> dict[str, str]:
    value = request.get("Options")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidRequest("Options must be an object of strings")
    return value


def _size(options: dict[str, str], v6: bool) -> int | None:
    keys = (SIZE6_OPTION,) if v6 else SIZE_OPTIONS
    for key in keys:
        if key in options:
            text = options[key].strip().removeprefix("/")
            if not SIZE_TEXT.fullmatch(text):
                raise InvalidRequest(f"ipam-opt {key}={options[key]!r} is not a prefix length such as 28")
            return int(text)
    return None


def _network(text: str, key: str) -> Network:
    return parse_network(text, key)


def _address(text: str) -> Address:
    return parse_address(text, "Address")


def _pool_id(request: Json) -> PoolId:
    return PoolId.parse(_string(request, "PoolID", required=True))
