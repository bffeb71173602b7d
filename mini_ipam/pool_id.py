"""PoolIDs, and the one codec between Docker's words and the store's strings.

A PoolID is ``<space>/<subnet>[/<ip-range>]``, for example ``local/10.1.2.0/28``,
``global/10.5.0.0/24/10.5.0.128/25`` or ``local/fd12:3456:789a:1::/64``: it names
the pool everywhere, across restarts and hosts.

The store knows nothing of address spaces or hosts. mini-ipam tells it:

* a pool's *scope*: ``global`` (the one swarm-wide pool of a subnet), or
  ``local@<host id>`` (a host's own pool: a local network, or a node's copy of a
  global one);
* a block's *label*: the address space that claimed it, then, when the pool has one,
  a space and its ip-range (``local``, ``global 10.5.0.128/25``).

Everything that writes or reads those strings goes through the functions here.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

from mini_ipam.errors import InvalidRequest
from stores import Address, Network, PoolInfo

LOCAL = "local"
"""The address space of local-scope networks (bridge, macvlan, ipvlan)."""
GLOBAL = "global"
"""The address space of swarm-scope networks: the swarm allocator's."""
SPACES = (LOCAL, GLOBAL)

SMALLEST = {4: 30, 6: 126}
"""The longest prefix a pool may have: a /30 still leaves two usable IPv4 hosts."""


def too_small(version: int, prefixlen: int) -> bool:
    """Whether a pool of ``/prefixlen`` is smaller than IPv``version`` pools may be (``SMALLEST``)."""
    return prefixlen > SMALLEST[version]


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
    if too_small(subnet.version, subnet.prefixlen):
        raise InvalidRequest(f"malformed PoolID {text!r}: no pool is smaller than /{SMALLEST[subnet.version]}")
    if ip_range is not None and (ip_range.version != subnet.version or not ip_range.subnet_of(subnet)):  # type: ignore[arg-type]
        raise InvalidRequest(f"malformed PoolID {text!r}: the ip-range is not inside the subnet")
    return PoolId(parts[0], subnet, ip_range)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> Address:
    if "%" in text:
        raise ValueError(text)
    return ipaddress.ip_address(text)


# -- scopes and labels: the store's strings --------------------------------------


def scope_of(space: str, host_id: str) -> str:
    """The store scope of a pool in ``space`` claimed by ``host_id``."""
    return GLOBAL if space == GLOBAL else f"{LOCAL}@{host_id}"


def space_of(scope: str) -> str:
    """The address space of a store scope."""
    return GLOBAL if scope == GLOBAL else LOCAL


def host_of(scope: str) -> str | None:
    """The host a local scope belongs to; None for the global scope."""
    space, _, host = scope.partition("@")
    return host if space == LOCAL and host else None


def label_of(space: str, ip_range: Network | None) -> str:
    """The block label: the address space, and the ip-range that is part of the pool's identity."""
    return space if ip_range is None else f"{space} {ip_range}"


def parse_label(label: str) -> tuple[str, Network | None]:
    """``(space, ip-range)`` of a block label."""
    space, _, ip_range = label.partition(" ")
    return space, ipaddress.ip_network(ip_range) if ip_range else None


def pool_id_of(pool: PoolInfo) -> PoolId:
    """The PoolID of a pool the store holds."""
    return PoolId(space_of(pool.scope), pool.subnet, parse_label(pool.block.label)[1])


def is_copy(pool: PoolInfo) -> bool:
    """Whether a pool is a node's local copy of a swarm network (a local pool on a global block)."""
    return pool.scope != GLOBAL and parse_label(pool.block.label)[0] == GLOBAL
