"""A member's own record of what it holds in a shared map, kept on its own disk.

A shared map can forget (a flush, an eviction, a restart without persistence, a
replica promoted before it had the latest writes). What each member was granted
is then still true, because its users still use it, so each member keeps a copy
of exactly that: every pool it opened or joined, as the shared map described it
(its block's label, owner and time included), and every address it claimed in
them. A member re-asserts its record into a rebuilt map (``stores.recovery``).

The record is a ``FileStore``: the same journal, written and ``fdatasync``ed
before the change is acknowledged, the same compaction, the same start-up
checks. Its changes are mirrors of changes the shared map made, so they are
applied as given, never refused: what the shared map granted is what the record
says.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from stores.base import AddressClaim, Network, PoolInfo
from stores.file import FileStore
from stores.memory import key_of, split_key


class Record(FileStore):
    """A FileStore that mirrors a member's holdings in a shared map."""

    def keep_pool(self, pool: PoolInfo) -> None:
        """Record ``pool`` (and its block) as the shared map holds it; nothing when it is recorded already.

        A recorded block that overlaps it, or the same subnet recorded under another label, is
        history the shared map has replaced (it granted this): those pools are dropped first.
        """
        subnet = pool.subnet
        key = key_of(subnet)
        with self._lock:
            if (key, pool.scope) in self._pools:
                return
            version, net, plen = split_key(key)
            held = self._maps[version].holder(net, plen)
            block = self._blocks.get(key)
            if held is not None and (block is None or block.label != pool.block.label):
                for stale in [p for p in self._held_pools() if p.subnet.overlaps(subnet)]:
                    self._commit({"op": "close", "subnet": key_of(stale.subnet), "scope": stale.scope})
                block = None
            spec = None
            if self._blocks.get(key) is None:
                spec = {"label": pool.block.label, "owner": pool.block.owner, "since": pool.block.since}
            self._commit(
                {"op": "open", "subnet": key, "scope": pool.scope, "owner": pool.owner, "since": pool.since,
                 "block": spec}
            )  # fmt: skip

    def drop_pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        """Forget a pool and its addresses; what was recorded, or None."""
        key = key_of(subnet)
        with self._lock:
            if (key, scope) not in self._pools:
                return None
            info = self._info(subnet, key, scope)
            self._commit({"op": "close", "subnet": key, "scope": scope})
            return info

    def keep_address(self, subnet: Network, scope: str, claim: AddressClaim) -> None:
        """Record a claimed address of a recorded pool; nothing when the pool is not recorded or has it already."""
        key = key_of(subnet)
        with self._lock:
            pool = self._pools.get((key, scope))
            value = int(claim.address)
            if pool is None or (pool.claims is not None and value in pool.claims):
                return
            event = {"op": "claim", "subnet": key, "scope": scope, "address": value, "since": claim.since}
            if claim.note:
                event["note"] = sys.intern(claim.note)
            self._commit(event)

    def drop_address(self, subnet: Network, scope: str, address: int) -> bool:
        """Forget an address; whether it was recorded."""
        key = key_of(subnet)
        with self._lock:
            pool = self._pools.get((key, scope))
            if pool is None or pool.claims is None or address not in pool.claims:
                return False
            self._commit({"op": "release", "subnet": key, "scope": scope, "address": address})
            return True

    def remember(self, name: str, value: str) -> None:
        """Record a setting, replacing what was recorded (the record's own notes, such as the map's id)."""
        with self._lock:
            if self._settings.get(name) != value:
                self._commit({"op": "set", "name": name, "value": value})

    def all_settings(self) -> dict[str, str]:
        """Every recorded setting."""
        with self._lock:
            return dict(self._settings)

    def holdings(self) -> Iterator[tuple[PoolInfo, list[AddressClaim]]]:
        """Every recorded pool with its addresses, blocks first in no particular order."""
        for pool in self._held_pools():
            yield pool, self.address_claims(pool.subnet, pool.scope)

    def _held_pools(self) -> list[PoolInfo]:
        return self.pools()
