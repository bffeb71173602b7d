"""Prometheus metrics: requests, errors, store round trips, and the state of the address map.

Every app gets its own registry (no process-global state), served at ``GET /metrics``.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from mini_ipam.errors import IpamError
from mini_ipam.inventory import Inventory

log = logging.getLogger("mini_ipam.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_bound_text = cast(Callable[[float], str], floatToGoString)
"""How prometheus_client writes a bucket bound (its own helper, untyped)."""
ERROR_KINDS = (*(kind.__name__ for kind in IpamError.__subclasses__()), "internal")
"""The ``kind`` label of every refusal the driver makes (``internal``: a bug), besides ``http_<status>``."""


class Metrics:
    """The driver's metrics in one registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = CounterFamily(
            "mini_ipam_requests", "Protocol requests answered, by method and result", ("method", "result"),
            self.registry,
        )  # fmt: skip
        self.latency = HistogramFamily(
            "mini_ipam_request_seconds", "Time to answer a protocol request, by method", ("method",),
            LATENCY_BUCKETS, self.registry,
        )  # fmt: skip
        self.errors = CounterFamily(
            "mini_ipam_errors", "Refused or failed requests, by kind of error", ("kind",), self.registry
        )
        # Every kind exists from the start, at 0: increase() cannot see a series' first value, so an alert
        # on increase(mini_ipam_errors_total{kind="Exhausted"}[...]) would miss the first refusal otherwise.
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.store_latency = HistogramFamily(
            "mini_ipam_store_seconds", "Time of one store operation (a round trip for Redis), by operation",
            ("operation",), LATENCY_BUCKETS, self.registry,
        )  # fmt: skip
        # Labels of known methods only (the app maps every other path to one label), so this stays small.
        self._children: dict[tuple[str, bool], tuple[Any, Any]] = {}
        self._health: _HealthCollector | None = None

    def observe_request(self, method: str, status: int, error_kind: str | None, seconds: float) -> None:
        """Count one answered request."""
        ok = status == 200
        children = self._children.get((method, ok))
        if children is None:
            # labels() takes a lock: look each pair up once.
            children = (self.requests.labels(method, "ok" if ok else "error"), self.latency.labels(method))
            self._children[(method, ok)] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)
        if error_kind is not None:
            self.errors.labels(error_kind).inc()

    def watch_map(self, take: Callable[[], Inventory], max_age: float = 1.0) -> None:
        """Publish the map's usage per parent, read with ``take`` at most every ``max_age`` seconds.

        ``take`` gives the parents only (``inventory.take_summary``): on Redis one round trip
        of counters, whatever the map holds, so the gauges are kept fresh.
        """
        self.registry.register(_MapCollector(take, max_age, self._store_answered))

    def watch_health(self, check: Callable[[], tuple[int, dict[str, Any]]]) -> None:
        """Publish the store's reachability and any twin host id, from the health check, at each scrape.

        Nothing of it runs on the request path. Call it before ``watch_map``: collectors
        run in that order, and a scrape whose health check found the store away does
        not also read the map (which would wait out the store's timeout a second time).
        """
        self._health = _HealthCollector(check)
        self.registry.register(self._health)

    def _store_answered(self) -> bool:
        return self._health is None or self._health.store_answered

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class _Series:
    """The labelled series of one metric, each a plain list, all behind one lock.

    prometheus_client's Counter and Histogram take a lock per value they touch (a histogram
    observation takes two) and add a call per step; on the request path, with a request, a
    latency and a store operation observed each time, that was about a tenth of a bare Flask
    request. These keep the same names, labels, buckets and exposition (``_created`` included)
    at one lock per observation.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], slots: int) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._slots = slots
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], list[float]] = {}

    def _values(self, labels: tuple[str, ...]) -> list[float]:
        """The series of ``labels``, created the first time: its creation time, then its ``slots`` values."""
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {labels}")
        with self._lock:
            return self._series.setdefault(labels, [time.time()] + [0.0] * self._slots)

    def _rows(self) -> list[tuple[tuple[str, ...], list[float]]]:
        with self._lock:
            return [(labels, list(values)) for labels, values in self._series.items()]

    def describe(self) -> Sequence[Any]:
        return []


class CounterFamily(_Series, Collector):
    """A labelled counter, exposed as prometheus_client's Counter is."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labelnames, 1)
        registry.register(self)

    def labels(self, *values: str) -> CounterChild:
        """The counter of one set of label values."""
        return CounterChild(self._lock, self._values(values))

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, (created, value) in self._rows():
            family.add_metric(list(labels), value, created=created)
        yield family


class CounterChild:
    """One series of a CounterFamily."""

    __slots__ = ("_lock", "_values")

    def __init__(self, lock: threading.Lock, values: list[float]) -> None:
        self._lock = lock
        self._values = values

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        with self._lock:
            self._values[1] += amount


class HistogramFamily(_Series, Collector):
    """A labelled histogram, exposed as prometheus_client's Histogram is."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = tuple(float(bound) for bound in buckets)
        super().__init__(name, documentation, labelnames, 1 + len(self.bounds) + 1)  # the sum, then per bucket
        registry.register(self)

    def labels(self, *values: str) -> HistogramChild:
        """The histogram of one set of label values."""
        return HistogramChild(self._lock, self._values(values), self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bounds = [_bound_text(bound) for bound in (*self.bounds, math.inf)]
        for labels, (created, total, *counts) in self._rows():
            family.add_metric(list(labels), list(zip(bounds, itertools.accumulate(counts), strict=True)), total)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, labels, strict=True)), created)
        yield family


class HistogramChild:
    """One series of a HistogramFamily."""

    __slots__ = ("_lock", "_values", "_bounds")

    def __init__(self, lock: threading.Lock, values: list[float], bounds: tuple[float, ...]) -> None:
        self._lock = lock
        self._values = values
        self._bounds = bounds

    def observe(self, amount: float) -> None:
        """Count ``amount`` in its bucket (the first whose bound is at least ``amount``) and in the sum."""
        slot = 2 + bisect_left(self._bounds, amount)
        with self._lock:
            self._values[1] += amount
            self._values[slot] += 1


class _MapCollector(Collector):
    """Gauges of the address map, from an inventory cached for ``max_age`` seconds."""

    def __init__(self, take: Callable[[], Inventory], max_age: float, store_answered: Callable[[], bool]) -> None:
        self._take = take
        self._max_age = max_age
        self._store_answered = store_answered
        self._lock = threading.Lock()
        self._cached: Inventory | None = None

    def _inventory(self) -> Inventory | None:
        with self._lock:
            if self._cached is None or time.time() - self._cached.taken_at > self._max_age:
                if not self._store_answered():
                    return None
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
        size = GaugeMetricFamily("mini_ipam_parent_addresses", "Addresses in the parent range, by parent",
                                 labels=("parent",))  # fmt: skip
        for view in inventory.parents:
            for length, count in sorted(view.blocks_by_size.items()):
                pools.add_metric([view.parent, str(length)], count)
                addresses.add_metric([view.parent, str(length)], view.addresses_by_size.get(length, 0))
            free.add_metric([view.parent], view.free_addresses)
            size.add_metric([view.parent], view.used_addresses + view.free_addresses)  # the parent's size
            if view.largest_free is not None:
                largest.add_metric([view.parent], view.largest_free)
        read_at = GaugeMetricFamily(
            "mini_ipam_map_read_timestamp_seconds",
            "When the map gauges were read from the store (Unix time): they are cached for seconds",
            value=inventory.taken_at,
        )
        yield from (pools, addresses, free, size, largest, read_at)


class _HealthCollector(Collector):
    """``mini_ipam_store_up`` and ``mini_ipam_twin_host``, from one health check per scrape."""

    def __init__(self, check: Callable[[], tuple[int, dict[str, Any]]]) -> None:
        self._check = check
        self.store_answered = True

    def describe(self) -> Sequence[Any]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            _, body = self._check()
        except Exception:  # a scrape must never fail; a check that cannot run did not see the store answer
            log.warning("the health check failed", exc_info=True)
            body = {}
        self.store_answered = body.get("store") == "reachable"
        yield GaugeMetricFamily("mini_ipam_store_up", "1 if the store answered this scrape's health check, else 0",
                                value=1.0 if self.store_answered else 0.0)  # fmt: skip
        yield GaugeMetricFamily("mini_ipam_twin_host", "1 while another live driver uses this host id on the store",
                                value=1.0 if "twin" in body else 0.0)  # fmt: skip
        shared = body.get("map")
        if shared is None:
            return  # a store only this host uses: there is no shared map to lose
        for name, text, field in (
            ("mini_ipam_map_lost", "Times this driver found the shared address map lost", "lost_total"),
            ("mini_ipam_map_rebuilt", "Times this driver re-asserted its claims into a rebuilt map", "rebuilt_total"),
            ("mini_ipam_map_conflicts", "Re-assertions of this driver's claims a rebuilt map refused",
             "conflicts_total"),
        ):  # fmt: skip
            yield CounterMetricFamily(name, text, value=shared[field])
        state = GaugeMetricFamily("mini_ipam_map_state", "1 for the shared map's state now (lost, recovering, ready)",
                                  labels=("state",))  # fmt: skip
        for name in ("lost", "recovering", "ready"):
            state.add_metric([name], 1.0 if shared["state"] == name else 0.0)
        yield state
