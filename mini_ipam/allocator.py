"""Carving subnets out of parent ranges and picking addresses inside them.

The Allocator turns IPAM requests (already decoded from the wire) into Store
operations, and owns every rule about them:

* sizes: a dynamic request gets an aligned subnet of exactly the asked prefix
  length from the first parent with room; IPv4 sizes stop at /30 and IPv6 at /126;
* explicit subnets are claimed exactly, inside the parents or not;
* address spaces: ``local`` is strict, like Docker's own IPAM, except that a
  ``local`` request for exactly a subnet held in ``global`` is that swarm network's
  node-local copy; ``global`` belongs to the swarm allocator, whose exact
  re-requests (it replays everything when it starts) get the existing pool back;
* addresses: never the IPv4 network or broadcast address (nor the IPv6
  subnet-router anycast address), never outside the pool, lowest free first or
  round-robin when asked;
* shared pools (a global pool, or a node-local copy of one) serve one network,
  whose gateway tells it apart: see ``_check_gateway`` and ``release_pool``.

Every claim and release is one atomic Store operation, so concurrent requests,
from one process or many hosts, can never hand out the same thing twice.
"""

from __future__ import annotations

import functools
import ipaddress
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import stores
from mini_ipam.errors import AddressNotFound, Conflict, Exhausted, InvalidRequest, PoolNotFound, StoreFailed
from mini_ipam.pool_id import SMALLEST, PoolId
from stores import Address, AnySubnet, Block, ExactSubnet, Granted, Network, Overlap, PoolInfo, Store

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

GLOBAL = "global"
LOCAL = "local"
GATEWAY_NOTE = "gateway"
"""The note a gateway's address claim carries, so listings can tell it apart."""


@dataclass(frozen=True)
class Settings:
    """What the allocator carves from, and who it claims for."""

    parents4: tuple[ipaddress.IPv4Network, ...] = (ipaddress.IPv4Network("172.16.0.0/16"),)
    parents6: tuple[ipaddress.IPv6Network, ...] = ()
    default_size4: int = 28
    default_size6: int = 64
    host_id: str = "localhost"


@dataclass(frozen=True)
class PoolRequest:
    """A decoded RequestPool: an explicit ``subnet``, or a dynamic ``size`` (None: the default)."""

    space: str
    v6: bool = False
    subnet: Network | None = None
    ip_range: Network | None = None
    size: int | None = None


@dataclass(frozen=True)
class AllocatedPool:
    """The answer to a RequestPool."""

    pool_id: PoolId
    subnet: Network


def random_ula() -> ipaddress.IPv6Network:
    """A random unique-local /48 (RFC 4193): fd00::/8 plus a 40-bit random global ID."""
    global_id = secrets.randbits(40)
    return ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 48))


class Allocator:
    """Subnets and addresses for Docker networks, kept in a Store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._parents6 = settings.parents6
        self._local_scope = f"{LOCAL}@{settings.host_id}"

    @property
    def parents6(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The IPv6 parents: configured ones, or a random ULA /48 kept in the store for good."""
        if not self._parents6:
            with _store_errors():
                stored = self.store.setting("pool6", str(random_ula()))
            self._parents6 = (ipaddress.IPv6Network(stored),)
        return self._parents6

    # -- pools ------------------------------------------------------------

    def request_pool(self, request: PoolRequest) -> AllocatedPool:
        """Claim a subnet for a network. See the module docstring for the rules."""
        if request.space not in (LOCAL, GLOBAL):
            raise InvalidRequest(f"unknown address space {request.space!r}: use {LOCAL!r} or {GLOBAL!r}")
        version = 6 if request.v6 else 4
        if request.subnet is None:
            return self._request_dynamic(request, version)
        return self._request_exact(request, request.subnet, version)

    def _request_dynamic(self, request: PoolRequest, version: int) -> AllocatedPool:
        if request.ip_range is not None:
            raise InvalidRequest("an ip-range needs an explicit subnet (--subnet) that contains it")
        parents: Sequence[Network] = self.settings.parents4 if version == 4 else self.parents6
        default = self.settings.default_size4 if version == 4 else self.settings.default_size6
        size = default if request.size is None else request.size
        widest = min(parent.prefixlen for parent in parents)
        if not widest <= size <= SMALLEST[version]:
            raise InvalidRequest(
                f"size /{size} is not possible: IPv{version} sizes range from /{widest} to /{SMALLEST[version]} "
                f"(parents: {_names(parents)})"
            )
        with _store_errors():
            result = self.store.open_pool(
                AnySubnet(tuple(parents), size),
                scope=self._scope(request.space),
                label=request.space,
                owner=self.settings.host_id,
            )
        if not isinstance(result, Granted):
            raise Exhausted(f"no free /{size} left in {_names(parents)}")
        subnet = result.pool.subnet
        return AllocatedPool(PoolId(request.space, subnet), subnet)

    def _request_exact(self, request: PoolRequest, subnet: Network, version: int) -> AllocatedPool:
        if subnet.version != version:
            raise InvalidRequest(f"subnet {subnet} is not an IPv{version} subnet")
        if subnet.prefixlen > SMALLEST[version]:
            raise InvalidRequest(f"subnet {subnet} is too small: IPv{version} subnets go down to /{SMALLEST[version]}")
        if request.size is not None and request.size != subnet.prefixlen:
            raise InvalidRequest(f"size /{request.size} contradicts the requested subnet {subnet}")
        ip_range = request.ip_range
        if ip_range is not None and (ip_range.version != version or not ip_range.subnet_of(subnet)):  # type: ignore[arg-type]
            raise InvalidRequest(f"ip-range {ip_range} is not inside subnet {subnet}")
        if ip_range is not None:
            first, last = _usable_range(subnet, ip_range)
            if int(first) > int(last):
                raise InvalidRequest(f"ip-range {ip_range} holds no usable address of subnet {subnet}")
        label = _label(request.space, ip_range)
        with _store_errors():
            result = self.store.open_pool(
                ExactSubnet(subnet),
                scope=self._scope(request.space),
                label=label,
                owner=self.settings.host_id,
                share_label=_label(GLOBAL, ip_range),
            )
        if isinstance(result, Overlap):
            raise Conflict(f"subnet {subnet} overlaps {_describe(result.holder)}")
        assert isinstance(result, Granted)
        return AllocatedPool(PoolId(request.space, subnet, ip_range), subnet)

    def release_pool(self, pool_id: PoolId) -> None:
        """Release a pool and every address in it.

        A shared pool whose gateway is still claimed is kept: its network is alive.
        Docker releases a network's gateway before its pool; what sends a ReleasePool
        with the gateway still claimed is the rollback of a second network that tried
        to join the pool (its own gateway was refused), and that must not take the
        first network's pool with it.
        """
        scope = self._scope(pool_id.space)
        with _store_errors(release=True):
            gateways = self._shared_gateways(pool_id)
            if gateways:
                raise Conflict(
                    f"pool {pool_id} was not released: its gateway {_names(gateways)} is still claimed, "
                    "so the network it belongs to still uses it (release the gateway first)"
                )
            closed = self.store.close_pool(pool_id.subnet, scope)
        if closed is None:
            raise PoolNotFound(f"pool {pool_id} is not held by {self.settings.host_id}")

    # -- addresses --------------------------------------------------------

    def request_address(
        self, pool_id: PoolId, address: Address | None = None, *, gateway: bool = False, serial: bool = False
    ) -> IPInterface:
        """Claim ``address``, or the gateway's address, or the lowest (or next serial) free one."""
        subnet = pool_id.subnet
        scope = self._scope(pool_id.space)
        if address is not None:
            self._check_address(subnet, address)
        note = GATEWAY_NOTE if gateway else ""
        with _StoreCall(pool_id):
            if gateway:
                self._check_gateway(pool_id, address)
            if address is not None:
                if not self.store.claim_address(subnet, scope, address, note) and not self._accepts_repeats(pool_id):
                    raise Conflict(f"address {address} is already in use in pool {pool_id}")
                return _interface(address, subnet)
            first, last = _usable_addresses(subnet, pool_id.ip_range)
            if gateway and int(first) <= int(last) and self.store.claim_address(subnet, scope, first, note):
                return _interface(first, subnet)
            found = self.store.claim_next_address(subnet, scope, first, last, serial, note)
        if found is None:
            raise Exhausted(f"no free address left in pool {pool_id} ({first} to {last})")
        return _interface(found, subnet)

    def _accepts_repeats(self, pool_id: PoolId) -> bool:
        """Whether an explicit address already held may be granted again.

        Global pools belong to the swarm allocator, which re-sends every address it
        made unique when it starts; node-local copies of them get the same replays.
        """
        return self._shared_pool(pool_id) is not None

    def _shared_pool(self, pool_id: PoolId) -> PoolInfo | None:
        """The pool if it is shared (see ``_is_shared``); UnknownPool when there is no such pool."""
        pool = self.store.pool(pool_id.subnet, self._scope(pool_id.space))
        if pool is None:
            raise stores.UnknownPool(f"no pool {pool_id}")
        return pool if _is_shared(pool_id, pool) else None

    def _gateways(self, pool_id: PoolId) -> list[Address]:
        """The pool's addresses claimed as a gateway; UnknownPool when there is no such pool."""
        claims = self.store.address_claims(pool_id.subnet, self._scope(pool_id.space))
        return [claim.address for claim in claims if claim.note == GATEWAY_NOTE]

    def _shared_gateways(self, pool_id: PoolId) -> list[Address]:
        """The gateways of a shared pool; none for a pool that is not shared, or does not exist."""
        try:
            if pool_id.space == GLOBAL:  # shared by definition: no need to read the pool first
                return self._gateways(pool_id)
            pool = self.store.pool(pool_id.subnet, self._scope(pool_id.space))
            return self._gateways(pool_id) if pool is not None and _is_shared(pool_id, pool) else []
        except stores.UnknownPool:
            return []

    def _check_gateway(self, pool_id: PoolId, address: Address | None) -> None:
        """Refuse a gateway that shows a second network trying to use a shared pool.

        The protocol names no network, so a swarm network's replays and copies
        (which may repeat a pool request) look like another network asking for the
        same subnet, until the gateway: a replay or a copy always names the
        network's own gateway, while a second network asks for a gateway of its own
        (any free one, or a different address). A node-local copy never asks for
        just any gateway, and a global pool has one gateway only.
        """
        copy = pool_id.space != GLOBAL
        if copy and self._shared_pool(pool_id) is None:
            return
        # A copy never asks for just any gateway, so that refusal needs no claims read.
        held = [] if copy and address is None else self._gateways(pool_id)
        if (address is None and (copy or held)) or (address is not None and held and address not in held):
            pool = self._shared_pool(pool_id)
            assert pool is not None
            holder = pool.block
            whose = f", whose gateway is {_names(held)}" if held else ""
            raise Conflict(
                f"subnet {pool_id.subnet} overlaps {_describe(holder)}{whose}: "
                "it serves one swarm network, and another network cannot share it"
            )

    def release_address(self, pool_id: PoolId, address: Address) -> None:
        """Release an address of a pool."""
        self._check_address(pool_id.subnet, address)
        with _StoreCall(pool_id, release=True):
            released = self.store.release_address(pool_id.subnet, self._scope(pool_id.space), address)
        if not released:
            raise AddressNotFound(f"address {address} is not allocated in pool {pool_id}")

    # -- helpers ----------------------------------------------------------

    def _scope(self, space: str) -> str:
        """The store scope of a pool: one shared global pool, one local pool per host."""
        return GLOBAL if space == GLOBAL else self._local_scope

    @staticmethod
    def _check_address(subnet: Network, address: Address) -> None:
        if address.version != subnet.version or address not in subnet:
            raise InvalidRequest(f"address {address} is not inside pool subnet {subnet}")
        first, last = _usable_addresses(subnet, None)
        if not int(first) <= int(address) <= int(last):
            raise InvalidRequest(f"address {address} is reserved in {subnet} (network or broadcast address)")


def _is_shared(pool_id: PoolId, pool: PoolInfo) -> bool:
    """Whether a pool may be requested more than once: a global pool, or a node's copy of one."""
    return pool_id.space == GLOBAL or pool.block.label == _label(GLOBAL, pool_id.ip_range)


def _usable_range(subnet: Network, ip_range: Network | None) -> tuple[Address, Address]:
    """First and last address that may be handed out, inside ``ip_range`` when given."""
    first: Address = subnet.network_address + 1
    last: Address = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    if ip_range is not None:
        first = max(first, ip_range.network_address)
        last = min(last, ip_range.broadcast_address)
    return first, last


# Every address request needs its pool's usable range; pools are few, requests many.
_usable_addresses = functools.lru_cache(maxsize=4096)(_usable_range)


def _interface(address: Address, subnet: Network) -> IPInterface:
    """``address`` with the pool's prefix length, built from integers (no text round trip)."""
    if address.version == 4:
        return ipaddress.IPv4Interface((int(address), subnet.prefixlen))
    return ipaddress.IPv6Interface((int(address), subnet.prefixlen))


def _label(space: str, ip_range: Network | None) -> str:
    """The block label: the address space, and the ip-range that is part of the pool's identity."""
    return space if ip_range is None else f"{space} {ip_range}"


def _names(items: Sequence[Network | Address]) -> str:
    return ", ".join(str(item) for item in items)


def _describe(holder: Block) -> str:
    since = datetime.fromtimestamp(holder.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    space = holder.label.split(" ", 1)[0]
    return f"{holder.subnet}, held in address space {space} by host {holder.owner} since {since}"


@contextmanager
def _store_errors(release: bool = False) -> Iterator[None]:
    """Turn a store failure into a clear, retryable refusal.

    A claim that failed changed nothing (a networked store undoes one that reached it
    too late); a release may have happened before the answer was lost, and is safe to
    send again.
    """
    try:
        yield
    except stores.StoreError as exc:
        raise _store_failed(exc, release) from exc


def _store_failed(exc: stores.StoreError, release: bool) -> StoreFailed:
    if release:
        return StoreFailed(f"the address store failed; the release may or may not have happened: {exc}")
    return StoreFailed(f"the address store failed, nothing was changed: {exc}")


class _StoreCall:
    """``_store_errors`` for calls on one pool, plus UnknownPool as PoolNotFound.

    A class rather than a generator: it wraps every address request, and entering a
    generator-based context manager costs several times as much.
    """

    __slots__ = ("pool_id", "release")

    def __init__(self, pool_id: PoolId, release: bool = False) -> None:
        self.pool_id = pool_id
        self.release = release

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            return
        if isinstance(exc, stores.UnknownPool):
            raise PoolNotFound(f"pool {self.pool_id} is not known here") from None
        if isinstance(exc, stores.StoreError):
            raise _store_failed(exc, self.release) from exc
