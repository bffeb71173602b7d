"""What the address map holds: usage per parent, free blocks, and every pool with its addresses.

Built from a Store's listing operations, for ``mini-ipam ls``, ``mini-ipam plan``,
``GET /inventory`` and the metrics. Listing reads the whole map, so its cost grows
with the number of pools: it is for operators and scrapes, never for a request.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mini_ipam.allocator import GATEWAY_NOTE
from mini_ipam.pool_id import is_copy, pool_id_of, space_of
from stores import AddressClaim, Block, Network, PoolInfo, Store, UnknownPool
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
    free_blocks: dict[int, int]  # prefix length -> maximal free aligned blocks of that size

    def to_json(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "used_addresses": self.used_addresses,
            "free_addresses": self.free_addresses,
            "largest_free": None if self.largest_free is None else f"/{self.largest_free}",
            "blocks_by_size": {f"/{k}": v for k, v in sorted(self.blocks_by_size.items())},
            "free_blocks": {f"/{k}": v for k, v in sorted(self.free_blocks.items())},
        }


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
    """Read the map once and describe it."""
    blocks = store.blocks()
    views = [parent_view(parent, blocks) for parent in parents]
    views_of_pools = [pool_view(store, pool) for pool in store.pools()] if with_pools else []
    pools = [pool for pool in views_of_pools if pool is not None]
    pools.sort(key=lambda p: (ipaddress.ip_network(p.subnet).version, ipaddress.ip_network(p.subnet), p.pool_id))
    return Inventory(views, pools)


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
