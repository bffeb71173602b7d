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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

import stores
from mini_ipam.errors import AddressNotFound, Conflict, Exhausted, InvalidRequest, IpamError, PoolNotFound, StoreFailed
from mini_ipam.pool_id import GLOBAL, LOCAL, SMALLEST, PoolId, label_of, parse_label, scope_of, too_small
from stores import Address, AnySubnet, Block, ExactSubnet, Granted, Network, Overlap, PoolInfo, Store

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

GATEWAY_NOTE = "gateway"
"""The note a gateway's address claim carries, so listings can tell it apart."""

ULA_SETTING = "pool6"
"""The store setting that holds the map's own IPv6 parent when none is configured."""

DEFAULT_PARENT4 = ipaddress.IPv4Network("172.16.0.0/16")
"""The IPv4 parent when none is configured (the original Go driver's)."""
DEFAULT_SIZE4 = 28
"""The IPv4 prefix length of a network that asks for no size (the original Go driver's)."""
DEFAULT_SIZE6 = 64
"""The IPv6 prefix length of a network that asks for no size6."""


@dataclass(frozen=True)
class Settings:
    """What the allocator carves from, and who it claims for."""

    parents4: tuple[ipaddress.IPv4Network, ...] = (DEFAULT_PARENT4,)
    parents6: tuple[ipaddress.IPv6Network, ...] = ()
    default_size4: int = DEFAULT_SIZE4
    default_size6: int = DEFAULT_SIZE6
    host_id: str = "localhost"


@dataclass(frozen=True)
class PoolRequest:
    """A decoded RequestPool: an explicit ``subnet``, or a dynamic ``size`` (None: the default).

    A ``subnet`` whose network address is zero (``0.0.0.0/N``, ``::/N``) means any
    free /N: engine 29 passes ``--subnet /N`` on that way, and compose files use it
    where compose drops ``ipam.options``.
    """

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

    def __init__(self, store: Store, settings: Settings, *, reader: bool = False) -> None:
        """Carve from ``settings`` in ``store``; a ``reader`` (the operator's listings) never writes to it."""
        self.store = store
        self.settings = settings
        self.reader = reader
        self._parents6 = settings.parents6
        self._scopes = {space: scope_of(space, settings.host_id) for space in (LOCAL, GLOBAL)}

    @property
    def parents6(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The IPv6 parents: configured ones, or the map's ULA /48, made at random once and kept in the store.

        A reader finds none while the map has none yet: it never makes one.
        """
        if not self._parents6:
            with _StoreCall():
                stored = self.store.setting(ULA_SETTING)
                if stored is None and not self.reader:
                    stored = self.store.make_setting(ULA_SETTING, str(random_ula()))
            if stored is None:
                return ()
            self._parents6 = (ipaddress.IPv6Network(stored),)
        return self._parents6

    # -- pools ------------------------------------------------------------

    def request_pool(self, request: PoolRequest) -> AllocatedPool:
        """Claim a subnet for a network. See the module docstring for the rules."""
        if request.space not in (LOCAL, GLOBAL):
            raise InvalidRequest(f"unknown address space {request.space!r}: use {LOCAL!r} or {GLOBAL!r}")
        version = 6 if request.v6 else 4
        subnet, size = request.subnet, request.size
        if subnet is not None:
            if subnet.version != version:
                raise InvalidRequest(f"subnet {subnet} is not an IPv{version} subnet")
            if size is not None and size != subnet.prefixlen:
                raise InvalidRequest(f"size /{size} contradicts the requested subnet {subnet}")
            if int(subnet.network_address) == 0 and subnet.prefixlen > 0:
                size = subnet.prefixlen  # any free /N
                subnet = None
        if subnet is None:
            if request.ip_range is not None:
                raise InvalidRequest("an ip-range needs an explicit subnet (--subnet) that contains it")
            return self._request_dynamic(request.space, version, size)
        return self._request_exact(request, subnet, version)

    def _request_dynamic(self, space: str, version: int, size: int | None) -> AllocatedPool:
        parents: Sequence[Network] = self.settings.parents4 if version == 4 else self.parents6
        if size is None:
            size = self.settings.default_size4 if version == 4 else self.settings.default_size6
        widest = min(parent.prefixlen for parent in parents)
        if size < widest or too_small(version, size):
            raise InvalidRequest(
                f"size /{size} is not possible: IPv{version} sizes range from /{widest} to /{SMALLEST[version]} "
                f"(parents: {_names(parents)})"
            )
        with _StoreCall():
            result = self.store.open_pool(
                AnySubnet(tuple(parents), size), scope=self._scopes[space], label=space, owner=self.settings.host_id
            )
        if not isinstance(result, Granted):
            raise Exhausted(f"no free /{size} left in {_names(parents)}")
        subnet = result.pool.subnet
        return AllocatedPool(PoolId(space, subnet), subnet)

    def _request_exact(self, request: PoolRequest, subnet: Network, version: int) -> AllocatedPool:
        if too_small(version, subnet.prefixlen):
            raise InvalidRequest(f"subnet {subnet} is too small: IPv{version} subnets go down to /{SMALLEST[version]}")
        ip_range = request.ip_range
        if ip_range is not None and (ip_range.version != version or not ip_range.subnet_of(subnet)):  # type: ignore[arg-type]
            raise InvalidRequest(f"ip-range {ip_range} is not inside subnet {subnet}")
        if ip_range is not None:
            first, last = _usable_range(subnet, ip_range)
            if int(first) > int(last):
                raise InvalidRequest(f"ip-range {ip_range} holds no usable address of subnet {subnet}")
        with _StoreCall():
            result = self.store.open_pool(
                ExactSubnet(subnet),
                scope=self._scopes[request.space],
                label=label_of(request.space, ip_range),
                owner=self.settings.host_id,
                share_label=label_of(GLOBAL, ip_range),
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
        pool = _PoolReads(self.store, pool_id, self._scopes[pool_id.space])
        with _StoreCall(release=True):
            gateways = pool.gateways(missing_ok=True) if pool.is_shared(missing_ok=True) else []
            if gateways:
                raise Conflict(
                    f"pool {pool_id} was not released: its gateway {_names(gateways)} is still claimed, "
                    "so the network it belongs to still uses it (release the gateway first)"
                )
            closed = self.store.close_pool(pool_id.subnet, pool.scope)
        if closed is None:
            raise PoolNotFound(f"pool {pool_id} is not held by {self.settings.host_id}")

    # -- addresses --------------------------------------------------------

    def request_address(
        self, pool_id: PoolId, address: Address | None = None, *, gateway: bool = False, serial: bool = False
    ) -> IPInterface:
        """Claim ``address``, or the gateway's address, or the lowest (or next serial) free one."""
        subnet = pool_id.subnet
        scope = self._scopes[pool_id.space]
        if address is not None:
            self._check_address(subnet, address)
        note = GATEWAY_NOTE if gateway else ""
        pool = _PoolReads(self.store, pool_id, scope)
        with _StoreCall(pool_id):
            if gateway:
                self._check_gateway(pool, address)
            if address is not None:
                # Global pools belong to the swarm allocator, which re-sends every address it made unique
                # when it starts; node-local copies of them get the same replays: those are granted again.
                if not self.store.claim_address(subnet, scope, address, note) and not pool.is_shared():
                    raise Conflict(f"address {address} is already in use in pool {pool_id}")
                return _interface(address, subnet)
            first, last = _usable_addresses(subnet, pool_id.ip_range)
            if gateway and int(first) <= int(last) and self.store.claim_address(subnet, scope, first, note):
                return _interface(first, subnet)
            found = self.store.claim_next_address(subnet, scope, first, last, serial, note)
        if found is None:
            raise Exhausted(f"no free address left in pool {pool_id} ({first} to {last})")
        return _interface(found, subnet)

    @staticmethod
    def _check_gateway(pool: _PoolReads, address: Address | None) -> None:
        """Refuse a gateway that shows a second network trying to use a shared pool.

        The protocol names no network, so a swarm network's replays and copies
        (which may repeat a pool request) look like another network asking for the
        same subnet, until the gateway: a replay or a copy always names the
        network's own gateway, while a second network asks for a gateway of its own
        (any free one, or a different address). A node-local copy never asks for
        just any gateway, and a global pool has one gateway only.
        """
        pool_id = pool.pool_id
        copy = pool_id.space != GLOBAL
        if copy and not pool.is_shared():
            return
        # A copy never asks for just any gateway, so that refusal needs no claims read.
        held = [] if copy and address is None else pool.gateways()
        if (address is None and (copy or held)) or (address is not None and held and address not in held):
            whose = f", whose gateway is {_names(held)}" if held else ""
            raise Conflict(
                f"subnet {pool_id.subnet} overlaps {_describe(pool.info().block)}{whose}: "
                "it serves one swarm network, and another network cannot share it"
            )

    def release_address(self, pool_id: PoolId, address: Address) -> None:
        """Release an address of a pool."""
        self._check_address(pool_id.subnet, address)
        with _StoreCall(pool_id, release=True):
            released = self.store.release_address(pool_id.subnet, self._scopes[pool_id.space], address)
        if not released:
            raise AddressNotFound(f"address {address} is not allocated in pool {pool_id}")

    # -- helpers ----------------------------------------------------------

    @staticmethod
    def _check_address(subnet: Network, address: Address) -> None:
        if address.version != subnet.version or address not in subnet:
            raise InvalidRequest(f"address {address} is not inside pool subnet {subnet}")
        first, last = _usable_addresses(subnet, None)
        if not int(first) <= int(address) <= int(last):
            raise InvalidRequest(f"address {address} is reserved in {subnet} (network or broadcast address)")


class _PoolReads:
    """What the shared-pool rules read of one pool, each read from the store at most once per request.

    A pool is *shared* when it may be requested more than once: a global pool (by
    definition, so that needs no read), or a node's local copy of one (its block is
    labelled global).
    """

    __slots__ = ("store", "pool_id", "scope", "_info", "_gateways")

    def __init__(self, store: Store, pool_id: PoolId, scope: str) -> None:
        self.store = store
        self.pool_id = pool_id
        self.scope = scope
        self._info: PoolInfo | None = None
        self._gateways: list[Address] | None = None

    def info(self) -> PoolInfo:
        """The pool; UnknownPool when there is none."""
        if self._info is None:
            info = self.store.pool(self.pool_id.subnet, self.scope)
            if info is None:
                raise stores.UnknownPool(f"no pool {self.pool_id}")
            self._info = info
        return self._info

    def is_shared(self, *, missing_ok: bool = False) -> bool:
        """Whether the pool is shared; a pool that does not exist is not, with ``missing_ok``."""
        if self.pool_id.space == GLOBAL:
            return True
        try:
            return self.info().block.label == label_of(GLOBAL, self.pool_id.ip_range)
        except stores.UnknownPool:
            if missing_ok:
                return False
            raise

    def gateways(self, *, missing_ok: bool = False) -> list[Address]:
        """The pool's addresses claimed as a gateway; none for a missing pool with ``missing_ok``."""
        if self._gateways is None:
            try:
                claims = self.store.address_claims(self.pool_id.subnet, self.scope)
            except stores.UnknownPool:
                if missing_ok:
                    return []
                raise
            self._gateways = [claim.address for claim in claims if claim.note == GATEWAY_NOTE]
        return self._gateways


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


def _names(items: Sequence[Network | Address]) -> str:
    return ", ".join(str(item) for item in items)


def _describe(holder: Block) -> str:
    since = datetime.fromtimestamp(holder.since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    space = parse_label(holder.label)[0]
    return f"{holder.subnet}, held in address space {space} by host {holder.owner} since {since}"


class _StoreCall:
    """The one translation of store failures into refusals, around every store call.

    ===================  ==================================================================
    store raises         the request is refused with
    ===================  ==================================================================
    UnknownPool          PoolNotFound (``pool ... is not known here``), for calls on a pool
    MapLost              StoreFailed: the shared map was lost and is being rebuilt; what to do
    MapRecovering        StoreFailed: the map hands out no new subnet yet; until when
    StoreError           StoreFailed: for a claim "nothing was changed" (a networked store
                         undoes one that reached it too late); for a release "may or may
                         not have happened" (its answer may be lost; it is safe to resend)
    ===================  ==================================================================

    A class rather than a generator: it wraps every address request, and entering a
    generator-based context manager costs several times as much.
    """

    __slots__ = ("pool_id", "release")

    def __init__(self, pool_id: PoolId | None = None, *, release: bool = False) -> None:
        self.pool_id = pool_id
        self.release = release

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, IpamError):
            return
        if isinstance(exc, stores.UnknownPool) and self.pool_id is not None:
            raise PoolNotFound(f"pool {self.pool_id} is not known here") from None
        if isinstance(exc, stores.MapLost):
            raise StoreFailed(
                f"the address store failed, nothing was changed: {exc}. This driver re-asserts the claims it "
                "holds into a rebuilt map by itself, and every other host's driver does the same; retry in a few "
                "seconds (GET /healthz on the plugin socket says how far the rebuild is)"
            ) from exc
        if isinstance(exc, stores.MapRecovering):
            raise StoreFailed(f"the address store failed, nothing was changed: {exc}; retry then") from exc
        if isinstance(exc, stores.StoreError):
            if self.release:
                raise StoreFailed(f"the address store failed; the release may or may not have happened: {exc}") from exc
            raise StoreFailed(f"the address store failed, nothing was changed: {exc}") from exc
