"""Prometheus metrics: requests, errors, store round trips, and the state of the address map.

Every app gets its own registry (no process-global state), served at ``GET /metrics``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mini_ipam.inventory import Inventory
from stores import Store

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STORE_OPERATIONS = (
    "open_pool", "close_pool", "pool", "claim_address", "claim_next_address", "release_address",
    "blocks", "pools", "addresses", "address_claims", "ping", "setting",
)  # fmt: skip


class Metrics:
    """The driver's metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mini_ipam_requests", "Protocol requests answered, by method and result", ("method", "result"),
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "mini_ipam_request_seconds", "Time to answer a protocol request, by method", ("method",),
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "mini_ipam_errors", "Refused or failed requests, by kind of error", ("kind",), registry=self.registry
        )
        self.store_latency = Histogram(
            "mini_ipam_store_seconds", "Time of one store operation (a round trip for Redis), by operation",
            ("operation",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        # Labels of known methods only (the app maps every other path to one label), so this stays small.
        self._children: dict[tuple[str, bool], tuple[Any, Any]] = {}

    def observe_request(self, method: str, status: int, error_kind: str | None, seconds: float) -> None:
        """Count one answered request."""
        ok = status == 200
        children = self._children.get((method, ok))
        if children is None:
            # labels() takes a lock and builds a key on every call: look each pair up once.
            children = (self.requests.labels(method, "ok" if ok else "error"), self.latency.labels(method))
            self._children[(method, ok)] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)
        if error_kind is not None:
            self.errors.labels(error_kind).inc()

    def watch_map(self, take: Callable[[], Inventory], max_age: float = 10.0) -> None:
        """Publish the map's state, read with ``take`` at most every ``max_age`` seconds."""
        self.registry.register(_MapCollector(take, max_age))

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class TimedStore:
    """A Store that times every operation into ``mini_ipam_store_seconds``."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self._store = store
        for name in STORE_OPERATIONS:
            setattr(self, name, self._timed(name, getattr(store, name), metrics.store_latency.labels(name)))

    @staticmethod
    def _timed(name: str, operation: Callable[..., Any], histogram: Any) -> Callable[..., Any]:
        observe = histogram.observe
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return operation(*args, **kwargs)
            finally:
                observe(clock() - started)

        timed.__name__ = name
        timed.__doc__ = operation.__doc__
        return timed

    def close(self) -> None:
        """Close the wrapped store."""
        self._store.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class _MapCollector(Collector):
    """Gauges of the address map, from an inventory cached for ``max_age`` seconds."""

    def __init__(self, take: Callable[[], Inventory], max_age: float) -> None:
        self._take = take
        self._max_age = max_age
        self._lock = threading.Lock()
        self._cached: Inventory | None = None

    def _inventory(self) -> Inventory | None:
        with self._lock:
            if self._cached is None or time.time() - self._cached.taken_at > self._max_age:
                try:
                    self._cached = self._take()
                except Exception:  # a scrape must never fail because the store does: /healthz says why
                    return None
            return self._cached

    def describe(self) -> Sequence[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        inventory = self._inventory()
        if inventory is None:
            return
        pools = GaugeMetricFamily("mini_ipam_pools", "Live subnets, by parent and prefix length",
                                  labels=("parent", "prefixlen"))  # fmt: skip
        addresses = GaugeMetricFamily("mini_ipam_addresses", "Addresses in use, by parent and pool prefix length",
                                      labels=("parent", "prefixlen"))  # fmt: skip
        free = GaugeMetricFamily("mini_ipam_free_addresses", "Addresses not covered by any subnet, by parent",
                                 labels=("parent",))  # fmt: skip
        largest = GaugeMetricFamily(
            "mini_ipam_largest_free_prefixlen", "Prefix length of the largest free block, by parent (absent if full)",
            labels=("parent",),
        )  # fmt: skip
        in_use: dict[tuple[str, int], int] = {}
        for pool in inventory.pools:
            parent = _parent_of(pool.subnet, [p.parent for p in inventory.parents])
            if parent is not None:
                key = (parent, int(pool.subnet.rsplit("/", 1)[1]))
                in_use[key] = in_use.get(key, 0) + len(pool.addresses)
        for view in inventory.parents:
            for length, count in sorted(view.blocks_by_size.items()):
                pools.add_metric([view.parent, str(length)], count)
                addresses.add_metric([view.parent, str(length)], in_use.get((view.parent, length), 0))
            free.add_metric([view.parent], view.free_addresses)
            if view.largest_free is not None:
                largest.add_metric([view.parent], view.largest_free)
        yield from (pools, addresses, free, largest)


def _parent_of(subnet: str, parents: Sequence[str]) -> str | None:
    import ipaddress

    network = ipaddress.ip_network(subnet)
    for parent in parents:
        candidate = ipaddress.ip_network(parent)
        if candidate.version == network.version and network.subnet_of(candidate):  # type: ignore[arg-type]
            return parent
    return None
