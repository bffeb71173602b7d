"""PoolIDs: self-describing names for pools, valid across restarts and hosts.

``<space>/<subnet>[/<ip-range>]``, for example ``local/10.1.2.0/28``,
``global/10.5.0.0/24/10.5.0.128/25`` or ``local/fd12:3456:789a:1::/64``.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from mini_ipam.errors import InvalidRequest
from stores import Address, Network

SPACES = ("local", "global")

SMALLEST = {4: 30, 6: 126}
"""The longest prefix a pool may have: a /30 still leaves two usable IPv4 hosts."""


def parse_network(text: str, what: str) -> Network:
    """A subnet in CIDR form; InvalidRequest, naming ``what``, for anything else (IPv6 zones too)."""
    if "%" in text:
        raise InvalidRequest(f"{what} {text!r} carries an IPv6 zone; subnets have none")
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise InvalidRequest(f"{what} {text!r} is not a subnet in CIDR form, such as 10.1.2.0/24: {exc}") from None


def parse_address(text: str, what: str) -> Address:
    """A bare IP address; InvalidRequest, naming ``what``, for anything else (IPv6 zones too)."""
    try:
        return _address(text)
    except ValueError:
        raise InvalidRequest(f"{what} {text!r} is not an IP address") from None


@dataclass(frozen=True)
class PoolId:
    """A parsed PoolID."""

    space: str
    subnet: Network
    ip_range: Network | None = None

    def __str__(self) -> str:
        text = f"{self.space}/{self.subnet}"
        return text if self.ip_range is None else f"{text}/{self.ip_range}"

    @classmethod
    def parse(cls, text: str) -> PoolId:
        """Parse a PoolID; InvalidRequest names what is wrong with it."""
        return _parse_pool_id(text)


# Every address request names its pool again, and parsing one is ipaddress work, so parses are
# remembered. PoolIds, networks and addresses never change, so sharing them between requests is
# safe; refusals raise and are not remembered. Two caches of 4096 entries stay under ~3 MB.


@functools.lru_cache(maxsize=4096)
def _parse_pool_id(text: str) -> PoolId:
    parts = text.split("/")
    if len(parts) not in (3, 5) or parts[0] not in SPACES:
        raise InvalidRequest(f"malformed PoolID {text!r}: expected <local|global>/<subnet>[/<ip-range>]")
    try:
        subnet = parse_network("/".join(parts[1:3]), "subnet")
        ip_range = parse_network("/".join(parts[3:5]), "ip-range") if len(parts) == 5 else None
    except InvalidRequest as exc:
        raise InvalidRequest(f"malformed PoolID {text!r}: {exc}") from None
    if subnet.prefixlen > SMALLEST[subnet.version]:
        raise InvalidRequest(f"malformed PoolID {text!r}: no pool is smaller than /{SMALLEST[subnet.version]}")
    if ip_range is not None and (ip_range.version != subnet.version or not ip_range.subnet_of(subnet)):  # type: ignore[arg-type]
        raise InvalidRequest(f"malformed PoolID {text!r}: the ip-range is not inside the subnet")
    return PoolId(parts[0], subnet, ip_range)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> Address:
    if "%" in text:
        raise ValueError(text)
    return ipaddress.ip_address(text)
