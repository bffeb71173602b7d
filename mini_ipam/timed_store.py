"""A Store that times every operation into ``mini_ipam_store_seconds``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from mini_ipam.metrics import Metrics
from stores import (
    Address,
    AddressClaim,
    AnySubnet,
    Block,
    ClosedPool,
    Counting,
    ExactSubnet,
    Granted,
    Lease,
    Network,
    NoFreeSubnet,
    Overlap,
    ParentUsage,
    PoolInfo,
    Store,
    StoreTraits,
)

T = TypeVar("T")

_clock = time.perf_counter


class TimedStore:
    """Wraps a Store: the same operations, each observed in the store-latency histogram by its name."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        histogram = metrics.store_latency
        # One bound ``observe`` per operation, looked up once: this wraps every store call of every request.
        self._open_pool = histogram.labels("open_pool").observe
        self._close_pool = histogram.labels("close_pool").observe
        self._pool = histogram.labels("pool").observe
        self._claim_address = histogram.labels("claim_address").observe
        self._claim_next_address = histogram.labels("claim_next_address").observe
        self._release_address = histogram.labels("release_address").observe
        self._blocks = histogram.labels("blocks").observe
        self._pools = histogram.labels("pools").observe
        self._usage = histogram.labels("usage").observe
        self._address_claims = histogram.labels("address_claims").observe
        self._ping = histogram.labels("ping").observe
        self._setting = histogram.labels("setting").observe

    @staticmethod
    def _timed(observe: Callable[[float], None], operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        started = _clock()
        try:
            return operation(*args, **kwargs)
        finally:
            observe(_clock() - started)

    def open_pool(
        self,
        target: ExactSubnet | AnySubnet,
        *,
        scope: str,
        label: str,
        owner: str,
        share_label: str | None = None,
    ) -> Granted | Overlap | NoFreeSubnet:
        return self._timed(
            self._open_pool, self.store.open_pool, target, scope=scope, label=label, owner=owner,
            share_label=share_label,
        )  # fmt: skip

    def close_pool(self, subnet: Network, scope: str) -> ClosedPool | None:
        return self._timed(self._close_pool, self.store.close_pool, subnet, scope)

    def pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        return self._timed(self._pool, self.store.pool, subnet, scope)

    def claim_address(self, subnet: Network, scope: str, address: Address, note: str = "") -> bool:
        return self._timed(self._claim_address, self.store.claim_address, subnet, scope, address, note)

    def claim_next_address(
        self, subnet: Network, scope: str, first: Address, last: Address, serial: bool, note: str = ""
    ) -> Address | None:
        return self._timed(
            self._claim_next_address, self.store.claim_next_address, subnet, scope, first, last, serial, note
        )

    def release_address(self, subnet: Network, scope: str, address: Address) -> bool:
        return self._timed(self._release_address, self.store.release_address, subnet, scope, address)

    def blocks(self) -> list[Block]:
        return self._timed(self._blocks, self.store.blocks)

    def pools(self) -> list[PoolInfo]:
        return self._timed(self._pools, self.store.pools)

    def usage(self, parents: Sequence[Network]) -> list[ParentUsage] | None:
        """The wrapped store's counters when it keeps them , else None."""
        if not isinstance(self.store, Counting):
            return None
        return self._timed(self._usage, self.store.usage, parents)

    def address_claims(self, subnet: Network, scope: str) -> list[AddressClaim]:
        return self._timed(self._address_claims, self.store.address_claims, subnet, scope)

    def ping(self) -> None:
        self._timed(self._ping, self.store.ping)

    def setting(self, name: str) -> str | None:
        return self._timed(self._setting, self.store.setting, name)

    def make_setting(self, name: str, value: str) -> str:
        return self._timed(self._setting, self.store.make_setting, name, value)

    def close(self) -> None:
        self.store.close()

    @property
    def traits(self) -> StoreTraits:
        return self.store.traits

    def lease(self, name: str, record: dict[str, Any], ttl: float) -> Lease | None:
        return self.store.lease(name, record, ttl)
