"""The ground floor of every store: the Store protocol, its data types and its exceptions.

Backends (``stores.memory``, ``stores.file``, ``stores.redis``) import this module
and nothing above it; ``stores.from_url`` (in the package) is the one door that
picks a backend by URL.

A store holds one *address map* per address family. The map is made of
**blocks**: claimed subnets that never overlap one another. Each block carries
one or more **pools**, the units that hand out single addresses; a pool is named
by its block's subnet and a *scope* string chosen by the caller. A block lives
as long as it has at least one pool.

Stores know nothing of Docker. Labels, scopes and owners are opaque strings to
them; the only rules a store enforces are the ones that must be atomic:

* blocks never overlap (``open_pool``);
* a pool may join an existing block only if that block's subnet is exactly the
  requested one and its label equals the caller's ``share_label``;
* an address is claimed at most once per pool.

Every method is atomic and safe to call from many threads (and, for the Redis
store, from many processes on many hosts).

Exception tree::

    StoreError                 the store failed; nothing was changed
    ├── StoreUnavailable       could not reach the store in time
    │   ├── MapLost            a shared map is gone or went back: flushed, evicted, restored from an
    │   │                      older copy, or replaced by another member's recovery
    │   └── MapRecovering      a shared map is being rebuilt; new blocks wait until it is
    └── CorruptState           persisted state cannot be read; never reset silently
    UnknownPool (LookupError)  a pool that does not exist was named
    ConfigurationError (ValueError)   a store URL that cannot be used

``open_pool`` answers with a value, not an exception: ``Granted``, ``Overlap``
(something held overlaps the subnet) or ``NoFreeSubnet`` (no parent has room).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class StoreError(Exception):
    """The store failed to carry out an operation; nothing was changed."""


class StoreUnavailable(StoreError):
    """The store could not be reached, or did not answer within the timeout."""


class MapLost(StoreUnavailable):
    """The shared map this store knew is gone, or went back in generation; the call changed nothing.

    ``why`` is ``absent`` (no identity: flushed, evicted, or a server that came back
    empty), ``replaced`` (another identity: a member rebuilt it after a loss) or
    ``behind`` (the same identity at an older generation: restored from an older copy,
    or a replica promoted before it had the latest writes).
    """

    def __init__(self, message: str, why: str, found: MapIdentity | None) -> None:
        super().__init__(message)
        self.why = why
        self.found = found


class MapRecovering(StoreUnavailable):
    """The shared map is being rebuilt after a loss: no new block until ``until`` (a Unix time) at the latest."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until


class CorruptState(StoreError):
    """Persisted state cannot be read. Raised at start-up; state is never reset silently."""


class UnknownPool(LookupError):
    """An operation named a pool (subnet + scope) that the store does not hold."""


class ConfigurationError(ValueError):
    """A store URL names an unknown scheme or carries an unusable option."""


@dataclass(frozen=True)
class MapIdentity:
    """Which shared map this is (``id``, made once with it), how far it has got (``gen``, counted up by
    every change), and the generation of one member's own last change in it (``own``)."""

    id: str
    gen: int
    own: int = 0


@dataclass(frozen=True)
class MapStatus:
    """A shared map as one look found it.

    ``identity`` is None when there is no map (none was made, or it was lost);
    ``recovering_until`` the Unix time until which it is being rebuilt, or None;
    ``replaced`` the id of the map it was made to replace after a loss ("" for none);
    ``alive`` the members whose leases were renewed lately.
    """

    identity: MapIdentity | None
    made: float = 0.0
    recovering_until: float | None = None
    replaced: str = ""
    alive: frozenset[str] = frozenset()
    expected: frozenset[str] = frozenset()  # while recovering: the members it waits for
    restored: frozenset[str] = frozenset()  # and those that have re-asserted
    cleaned: frozenset[str] = frozenset()  # and those that have dropped what they had released since


@dataclass(frozen=True)
class Block:
    """A claimed subnet in the address map.

    ``label`` is the caller's free-form tag (mini-ipam uses the address space and
    the ip-range), ``owner`` the host that claimed it, ``since`` a Unix time.
    """

    subnet: Network
    label: str
    owner: str
    since: float


@dataclass(frozen=True)
class PoolInfo:
    """A pool: an address allocator attached to a block, named by (subnet, scope)."""

    block: Block
    scope: str
    owner: str
    since: float

    @property
    def subnet(self) -> Network:
        """The subnet of the block the pool belongs to."""
        return self.block.subnet


@dataclass(frozen=True)
class AddressClaim:
    """A claimed address of a pool: when, and the caller's note (mini-ipam marks the gateway)."""

    address: Address
    since: float
    note: str = ""


@dataclass(frozen=True)
class ExactSubnet:
    """Ask for exactly this subnet."""

    subnet: Network


@dataclass(frozen=True)
class AnySubnet:
    """Ask for any free, aligned subnet of ``prefixlen`` inside the first parent with room."""

    parents: tuple[Network, ...]
    prefixlen: int


@dataclass(frozen=True)
class Granted:
    """``open_pool`` succeeded. ``created`` is False when an existing pool was returned."""

    pool: PoolInfo
    created: bool


@dataclass(frozen=True)
class Overlap:
    """``open_pool`` was refused: ``holder`` overlaps the requested subnet."""

    holder: Block


@dataclass(frozen=True)
class NoFreeSubnet:
    """``open_pool`` was refused: no parent has a free subnet of the requested size."""


@dataclass(frozen=True)
class ClosedPool:
    """``close_pool`` removed a pool; ``freed`` tells whether its block left the map too."""

    pool: PoolInfo
    freed: bool


@dataclass(frozen=True)
class StoreTraits:
    """What a kind of store is, so that callers never need to read its URL themselves.

    ``shared``: many processes on many hosts use one map (Redis), so each keeps a lease.
    ``in_process``: the state lives in the memory of the process that opened it
    (``memory://``); any other process must ask that one.
    ``single_writer``: one process at a time may change it (``file://``, locked); others
    may still open it read-only.
    """

    shared: bool = False
    in_process: bool = False
    single_writer: bool = False


SHARED = StoreTraits(shared=True)
"""The traits of a store that many hosts share."""


@dataclass(frozen=True)
class LeaseState:
    """What one renewal of a lease found.

    ``held`` is True when this instance holds the name (and renewed it); else ``holder``
    is the record of the instance that does. ``note`` is a record another instance
    left for this name with ``Lease.post``, while it lasts.
    """

    held: bool
    holder: dict[str, Any] | None = None
    note: dict[str, Any] | None = None


class Lease(Protocol):
    """An expiring record under one name on a shared store, held by one instance at a time.

    Each renewal by the holder counts up the record's ``beat``; a record whose
    holder stops renewing expires after the lease's time to live.
    """

    def renew(self) -> LeaseState:
        """Take the name if it is free, renew it if this instance holds it, else say who does."""
        ...

    def post(self, note: dict[str, Any]) -> None:
        """Leave ``note`` under the name for its holder to read (expires like the lease)."""
        ...

    def release(self) -> None:
        """Give the name up if this instance still holds it (compare and delete), so a successor need not wait."""
        ...


@runtime_checkable
class Store(Protocol):
    """The operations every store offers. All of them are atomic."""

    def open_pool(
        self,
        target: ExactSubnet | AnySubnet,
        *,
        scope: str,
        label: str,
        owner: str,
        share_label: str | None = None,
    ) -> Granted | Overlap | NoFreeSubnet:
        """Claim a block and attach a pool named ``scope`` to it.

        With ``share_label`` set, an ``ExactSubnet`` already held by a block whose
        label equals it is shared instead of refused: the pool joins that block,
        or, if the pool ``(subnet, scope)`` already exists, it is returned with
        ``created=False``. Without it any overlap, an identical block included,
        is refused. ``label`` and ``owner`` describe a block created here.
        """
        ...

    def close_pool(self, subnet: Network, scope: str) -> ClosedPool | None:
        """Remove a pool and all its addresses; free its block if it was the last pool.

        Returns None when no such pool exists (nothing changes).
        """
        ...

    def pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        """The pool ``(subnet, scope)``, or None."""
        ...

    def claim_address(self, subnet: Network, scope: str, address: Address, note: str = "") -> bool:
        """Claim ``address`` in a pool, with an optional ``note``; False when it is already claimed.

        Raises UnknownPool when the pool does not exist.
        """
        ...

    def claim_next_address(
        self, subnet: Network, scope: str, first: Address, last: Address, serial: bool, note: str = ""
    ) -> Address | None:
        """Claim the lowest free address in ``[first, last]``; None when there is none.

        With ``serial``, search from just after the pool's most recent serial claim
        and wrap around, so a released address is not reused at once.
        Raises UnknownPool when the pool does not exist.
        """
        ...

    def release_address(self, subnet: Network, scope: str, address: Address) -> bool:
        """Release an address; False when it was not claimed.

        Raises UnknownPool when the pool does not exist.
        """
        ...

    def blocks(self) -> list[Block]:
        """Every block in the map, in no particular order."""
        ...

    def pools(self) -> list[PoolInfo]:
        """Every pool in the map, in no particular order."""
        ...

    def address_claims(self, subnet: Network, scope: str) -> list[AddressClaim]:
        """The claimed addresses of a pool with their times and notes, in ascending order.

        Raises UnknownPool when the pool does not exist.
        """
        ...

    def ping(self) -> None:
        """Return when the store answers; raise StoreError when it does not."""
        ...

    def setting(self, name: str) -> str | None:
        """The stored value of the setting ``name``, or None. Never writes."""
        ...

    def make_setting(self, name: str, value: str) -> str:
        """Store ``value`` as the setting ``name`` unless one is stored already; the stored value."""
        ...

    def close(self) -> None:
        """Release connections and files. The store is unusable afterwards."""
        ...

    @property
    def traits(self) -> StoreTraits:
        """What kind of store this is."""
        ...

    def lease(self, name: str, record: dict[str, Any], ttl: float) -> Lease | None:
        """A lease on ``name`` for this process, carrying ``record``; None for a store only one host uses."""
        ...


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and errors."""
    parts = urlsplit(url)
    # Taken apart as text, not through parts.port: a URL with a malformed port is one to report, safely.
    userinfo, at, location = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return url
    return parts._replace(netloc=f"{user}:***@{location}").geturl()


@dataclass(frozen=True)
class ParentUsage:
    """What the map holds inside one parent range, read from counters kept beside the tree.

    ``blocks_by_size`` and ``addresses_by_size`` map a prefix length to the claimed blocks of
    that size inside the parent and the addresses claimed in their pools; ``around``
    counts blocks that hold the whole parent; ``largest_free`` is the prefix length of
    the largest free aligned block inside it (None when none is free).
    """

    parent: Network
    blocks_by_size: dict[int, int]
    addresses_by_size: dict[int, int]
    around: int
    largest_free: int | None

    @property
    def used_addresses(self) -> int:
        """Addresses of the parent covered by claimed blocks."""
        if self.around:
            return self.parent.num_addresses
        width = self.parent.max_prefixlen
        return sum(count << (width - length) for length, count in self.blocks_by_size.items())


@runtime_checkable
class Counting(Protocol):
    """A store that keeps usage counters per parent, so a summary costs one round trip whatever the map holds."""

    def usage(self, parents: Sequence[Network]) -> list[ParentUsage] | None:
        """The usage of each parent, in order; None when the store cannot count one of them (then scan)."""
        ...


@runtime_checkable
class Rebuilding(Protocol):
    """A store on a shared map that finds out when the map was lost, and rebuilds it (``stores.recovery``)."""

    def start(self) -> None:
        """Attach to the map (adopt, make or rebuild it); raises StoreError when the store does not answer."""
        ...

    def check(self) -> MapStatus:
        """Look at the map now, writing a probe; start a rebuild if it was lost."""
        ...

    @property
    def health(self) -> MapHealth:
        """What a health check reports of the map, as of the last look."""
        ...


@dataclass(frozen=True)
class MapHealth:
    """A member's view of its shared map, for health checks and metrics.

    ``lost``: why the map is lost, while the member rebuilds it (None when it is not);
    ``recovering_until`` / ``settling_until``: Unix times until which no new block is
    handed out (the map recovers) or claimed by this member (its server just changed);
    ``conflicts``: re-assertions the last rebuild had refused; ``warnings``: why
    acknowledged claims might not survive the server (its persistence and eviction).
    """

    identity: MapIdentity | None
    lost: str | None
    lost_total: int
    rebuilt_total: int
    conflicts: tuple[str, ...]
    conflicts_total: int
    recovering_until: float | None
    settling_until: float | None
    warnings: tuple[str, ...]
    last_rebuild: str
