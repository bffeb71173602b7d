"""What the address map holds: usage per parent, free blocks, and every pool with its addresses.

Built from a Store's listing operations, for ``mini-ipam ls``, ``mini-ipam plan``,
``GET /inventory`` and the metrics. Two costs:

* ``take_summary`` (the parents table, and the metrics): from the counters a
  ``Counting`` store keeps beside its tree, one round trip whatever the map holds;
  a store without them (memory, file: the map is in the process or one file) is
  scanned.
* ``take_inventory`` and ``list_pools`` (every pool with its addresses): a walk of
  the map whose cost grows with the number of pools; ``list_pools`` yields pools one
  by one, filtered and limited, so a listing streams. For operators, never for a
  request.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mini_ipam.allocator import GATEWAY_NOTE
from mini_ipam.pool_id import is_copy, pool_id_of, space_of
from stores import AddressClaim, Block, Counting, Network, ParentUsage, PoolInfo, Store, StoreError, UnknownPool
from stores.tree import BlockTree


@dataclass(frozen=True)
class PoolView:
    """One pool as an operator sees it."""

    pool_id: str
    subnet: str
    space: str
    owner: str
    since: float
    gateway: str | None
    claims: tuple[AddressClaim, ...]
    copy_of_global: bool = False

    @property
    def addresses(self) -> tuple[str, ...]:
        """The claimed addresses, as text."""
        return tuple(str(c.address) for c in self.claims)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id,
            "subnet": self.subnet,
            "space": self.space,
            "owner": self.owner,
            "since": self.since,
            "age_seconds": round(now - self.since, 1),
            "gateway": self.gateway,
            "addresses": list(self.addresses),
            "claims": [{"address": str(c.address), "since": c.since, "note": c.note} for c in self.claims],
            "copy_of_global": self.copy_of_global,
        }


@dataclass(frozen=True)
class ParentView:
    """Usage of one parent range."""

    parent: str
    used_addresses: int
    free_addresses: int
    largest_free: int | None  # prefix length of the largest free block; None when full
    blocks_by_size: dict[int, int]  # prefix length -> claimed blocks of that size inside
    free_blocks: dict[int, int] | None  # prefix length -> maximal free aligned blocks; None: not read
    addresses_by_size: dict[int, int] = field(default_factory=dict)  # prefix length -> addresses in its pools

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "parent": self.parent,
            "used_addresses": self.used_addresses,
            "free_addresses": self.free_addresses,
            "largest_free": None if self.largest_free is None else f"/{self.largest_free}",
            "blocks_by_size": {f"/{k}": v for k, v in sorted(self.blocks_by_size.items())},
            "addresses_by_size": {f"/{k}": v for k, v in sorted(self.addresses_by_size.items())},
        }
        if self.free_blocks is not None:
            body["free_blocks"] = {f"/{k}": v for k, v in sorted(self.free_blocks.items())}
        return body


@dataclass
class Inventory:
    """A snapshot of the map."""

    parents: list[ParentView]
    pools: list[PoolView] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "parents": [parent.to_json() for parent in self.parents],
            "pools": [pool.to_json(self.taken_at) for pool in self.pools],
        }


def take_inventory(store: Store, parents: Sequence[Network], *, with_pools: bool = True) -> Inventory:
    """Read the map once and describe it: the parents (with their free blocks) and, by default, every pool."""
    blocks = store.blocks()
    views = [parent_view(parent, blocks) for parent in parents]
    pools = list(list_pools(store)) if with_pools else []
    return Inventory([_with_addresses(view, pools) for view in views] if with_pools else views, pools)


def take_summary(store: Store, parents: Sequence[Network]) -> Inventory:
    """The parents' usage without the pools.

    From a ``Counting`` store's counters: one round trip, whatever the map holds (the
    free blocks per size are not read then). Otherwise the map is read whole.
    """
    if isinstance(store, Counting):
        usage = store.usage(parents)
        if usage is not None:
            return Inventory([counted_view(counted) for counted in usage])
    return Inventory(take_inventory(store, parents).parents)


def counted_view(usage: ParentUsage) -> ParentView:
    """A parent's view from its counters."""
    used = usage.used_addresses
    return ParentView(
        parent=str(usage.parent),
        used_addresses=used,
        free_addresses=usage.parent.num_addresses - used,
        largest_free=usage.largest_free,
        blocks_by_size=dict(usage.blocks_by_size),
        free_blocks=None,
        addresses_by_size=dict(usage.addresses_by_size),
    )


@dataclass(frozen=True)
class PoolFilter:
    """Which pools a listing shows: inside ``parent`` (if given), of ``owner`` (if given), at most ``limit``."""

    parent: Network | None = None
    owner: str | None = None
    limit: int | None = None

    def admits(self, pool: PoolInfo) -> bool:
        """Whether ``pool`` passes the parent and owner filters (the limit is counted by the listing)."""
        if self.owner is not None and pool.owner != self.owner:
            return False
        parent = self.parent
        return parent is None or (pool.subnet.version == parent.version and pool.subnet.subnet_of(parent))  # type: ignore[arg-type]


EVERY_POOL = PoolFilter()


def list_pools(
    store: Store, only: PoolFilter = EVERY_POOL, progress: Callable[[int, int], None] | None = None
) -> Iterator[PoolView]:
    """The pools ``only`` admits, in address order, each read when it is yielded.

    ``progress(done, total)`` is called as pools are read (total: the pools that pass
    the filters, before the limit). A pool that vanishes while the listing runs is left out.
    """
    chosen = [pool for pool in store.pools() if only.admits(pool)]
    chosen.sort(key=lambda p: (p.subnet.version, p.subnet, str(pool_id_of(p))))
    total = len(chosen) if only.limit is None else min(len(chosen), only.limit)
    shown = 0
    for pool in chosen:
        if shown == total:
            break
        view = pool_view(store, pool)
        if view is None:
            continue
        shown += 1
        if progress is not None:
            progress(shown, total)
        yield view


def inventory_json(
    parents: Sequence[ParentView],
    pools: Iterable[PoolView],
    taken_at: float,
    decorate: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[str]:
    """The inventory's JSON in pieces, one pool at a time, so that a long listing streams.

    ``decorate`` may add to each pool's JSON object before it is written.

    A store error while the pools are read ends the list early, and the document then
    carries ``"error"`` (the reply's status was sent with the first piece).
    """
    yield json.dumps({"taken_at": taken_at, "parents": [view.to_json() for view in parents]})[:-1] + ', "pools": ['
    separator = ""
    try:
        for pool in pools:
            body = pool.to_json(taken_at)
            if decorate is not None:
                decorate(body)
            yield separator + json.dumps(body)
            separator = ", "
    except StoreError as exc:
        yield f'], "error": {json.dumps(f"the listing stopped early: {exc}")}}}'
        return
    yield "]}"


def _with_addresses(view: ParentView, pools: Sequence[PoolView]) -> ParentView:
    """``view`` with the addresses of the pools inside its parent, by the pool's prefix length."""
    parent = ipaddress.ip_network(view.parent)
    by_size: Counter[int] = Counter()
    for pool in pools:
        subnet = ipaddress.ip_network(pool.subnet)
        if subnet.version == parent.version and subnet.subnet_of(parent):  # type: ignore[arg-type]
            by_size[subnet.prefixlen] += len(pool.claims)
    return ParentView(
        view.parent,
        view.used_addresses,
        view.free_addresses,
        view.largest_free,
        view.blocks_by_size,
        view.free_blocks,
        {length: count for length, count in by_size.items() if count},
    )


def parent_view(parent: Network, blocks: Iterable[Block]) -> ParentView:
    """Usage of ``parent`` given every block of the map."""
    tree = BlockTree(parent.max_prefixlen)
    sizes: Counter[int] = Counter()
    used = 0
    for block in blocks:
        subnet = block.subnet
        if subnet.version != parent.version or not subnet.overlaps(parent):
            continue
        tree.claim(int(subnet.network_address), subnet.prefixlen)
        if subnet.prefixlen >= parent.prefixlen:
            sizes[subnet.prefixlen] += 1
            used += subnet.num_addresses
        else:
            used = parent.num_addresses  # a block around the parent takes all of it
    free = Counter(length for _, length in tree.free_blocks(int(parent.network_address), parent.prefixlen))
    return ParentView(
        parent=str(parent),
        used_addresses=used,
        free_addresses=parent.num_addresses - used,
        largest_free=min(free) if free else None,
        blocks_by_size=dict(sizes),
        free_blocks=dict(free),
    )


def pool_view(store: Store, pool: PoolInfo) -> PoolView | None:
    """An operator's view of one pool; None when it vanished while being read."""
    try:
        claims = store.address_claims(pool.subnet, pool.scope)
    except UnknownPool:
        return None
    gateway = next((str(c.address) for c in claims if c.note == GATEWAY_NOTE), None)
    return PoolView(
        pool_id=str(pool_id_of(pool)),
        subnet=str(pool.subnet),
        space=space_of(pool.scope),
        owner=pool.owner,
        since=pool.since,
        gateway=gateway,
        claims=tuple(claims),
        copy_of_global=is_copy(pool),
    )
