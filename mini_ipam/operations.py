"""The operator's endpoints: is the driver healthy, and what does the map hold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol

from mini_ipam.allocator import Allocator
from mini_ipam.errors import IpamError
from mini_ipam.inventory import (
    EVERY_POOL,
    Inventory,
    ParentView,
    PoolFilter,
    PoolView,
    list_pools,
    take_inventory,
    take_summary,
)
from stores import MapHealth, Network, Rebuilding, StoreError, StoreUnavailable, redact_url

STORE_ADVICE = (
    "check that the store runs and that this host can reach it (--store, MINI_IPAM_STORE); until it answers, "
    "every request that needs it is refused and nothing is changed"
)


class TwinWatch(Protocol):
    """What the health check needs of a heartbeat (``mini_ipam.presence.HostPresence``)."""

    @property
    def twin(self) -> object | None:
        """Another live driver with this host id, if there is one."""
        ...


class Operations:
    """Health and inventory of one driver."""

    def __init__(
        self,
        allocator: Allocator,
        presence: TwinWatch | None = None,
        shared: Rebuilding | None = None,
        store_url: str = "",
    ) -> None:
        """``shared``: the store when it is a shared map, whose identity the health check then proves;
        ``store_url``: the driver's store, told (without its password) by ``settings``."""
        self.allocator = allocator
        self.presence = presence
        self.shared = shared
        self.store_url = store_url

    def settings(self) -> dict[str, Any]:
        """What the operator commands need to read this driver's map: its store (no password) and parents."""
        settings = self.allocator.settings
        body: dict[str, Any] = {
            "store": redact_url(self.store_url) if self.store_url else "",
            "pool": [str(parent) for parent in settings.parents4],
            "pool6": [str(parent) for parent in settings.parents6],
            "host_id": settings.host_id,
        }
        return body

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 when a claim could be made now; 503 with the reason when it could not.

        On a shared map it checks what a claim needs, not only that the server answers:
        the map's identity and generation, that the server takes writes and runs the
        script (a read-only replica, a Sentinel port, a user without script rights fail).
        ``"status": "warning"`` while the map recovers, this driver settles after a
        server change, a rebuild had conflicts, the server's settings could lose or evict
        claims, or another live driver uses this host id.
        """
        body: dict[str, Any] = {"host_id": self.allocator.settings.host_id}
        started = time.perf_counter()
        try:
            if self.shared is not None:
                self.shared.check()
            else:
                self.allocator.store.ping()
        except StoreError as exc:
            # "unreachable": no answer (come back when it does); "failing": it answered with a failure, such as a
            # full disk under a file store, a read-only replica, a user without script rights, or no Redis at
            # all; its message says what to do.
            unreachable = isinstance(exc, StoreUnavailable)
            body.update(status="unavailable", store="unreachable" if unreachable else "failing", error=str(exc))
            if unreachable:
                body["advice"] = STORE_ADVICE
            return 503, body
        body.update(
            status="ok", store="reachable", store_round_trip_ms=round((time.perf_counter() - started) * 1000, 3)
        )
        warnings: list[str] = []
        if self.shared is not None:
            view = self.shared.health
            body["map"] = _map_body(view)
            if view.lost is not None:
                body.update(status="unavailable", error=f"{view.lost}; this driver is rebuilding it from its record")
                return 503, body
            warnings += _map_warnings(view)
        twin = getattr(self.presence, "twin", None)
        if twin is not None:
            body["twin"] = f"another live driver uses host id {body['host_id']!r}: {twin}"
            warnings.append(body["twin"])
        if warnings:
            body.update(status="warning", warnings=warnings)
        return 200, body

    def parents(self) -> list[Network]:
        """Every parent, IPv6 included when the store can tell it."""
        parents: list[Network] = list(self.allocator.settings.parents4)
        try:
            parents.extend(self.allocator.parents6)
        except IpamError:
            pass
        return parents

    def inventory(self) -> Inventory:
        """The whole map, read now."""
        return take_inventory(self.allocator.store, self.parents())

    def summary(self) -> Inventory:
        """The parents' usage, without pools: a bounded cost on a store that counts (see ``take_summary``)."""
        return take_summary(self.allocator.store, self.parents())

    def parent_views(self, *, free_blocks: bool) -> list[ParentView]:
        """The parents' usage; with ``free_blocks``, also their free blocks per size (which reads every block)."""
        counted = self.summary().parents
        if not free_blocks or all(view.free_blocks is not None for view in counted):
            return counted
        scanned = take_inventory(self.allocator.store, self.parents(), with_pools=False).parents
        return [
            replace(view, addresses_by_size=known.addresses_by_size)
            for view, known in zip(scanned, counted, strict=True)
        ]

    def pools(self, only: PoolFilter = EVERY_POOL) -> Iterator[PoolView]:
        """The pools ``only`` admits, read one by one (see ``list_pools``)."""
        return list_pools(self.allocator.store, only)


def _map_body(view: MapHealth) -> dict[str, Any]:
    return {
        "id": view.identity.id if view.identity else None,
        "generation": view.identity.gen if view.identity else None,
        "state": "lost" if view.lost else ("recovering" if view.recovering_until else "ready"),
        "recovering_until": view.recovering_until,
        "settling_until": view.settling_until,
        "lost_total": view.lost_total,
        "rebuilt_total": view.rebuilt_total,
        "last_rebuild": view.last_rebuild or None,
        "conflicts": list(view.conflicts),
        "conflicts_total": view.conflicts_total,
    }


def _map_warnings(view: MapHealth) -> list[str]:
    found: list[str] = []
    now = time.time()
    if view.recovering_until is not None:
        left = max(0.0, view.recovering_until - now)
        found.append(
            f"the map is new or being rebuilt after a loss: no new subnet for up to {left:.0f}s, or until every "
            "host has re-asserted its claims"
        )
    if view.settling_until is not None:
        found.append(
            f"the store's server changed: this driver claims no new subnet for {view.settling_until - now:.0f}s more"
        )
    found += [f"a re-assertion was refused: {conflict}" for conflict in view.conflicts]
    found += [f"the store: {warning}" for warning in view.warnings]
    return found
