"""The operator's endpoints: is the driver healthy, and what does the map hold."""

from __future__ import annotations

import time
from typing import Any, Protocol

from mini_ipam.allocator import Allocator
from mini_ipam.errors import IpamError
from mini_ipam.inventory import Inventory, take_inventory
from stores import Network, StoreError, StoreUnavailable

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

    def __init__(self, allocator: Allocator, presence: TwinWatch | None = None) -> None:
        self.allocator = allocator
        self.presence = presence

    def health(self) -> tuple[int, dict[str, Any]]:
        """200 with the store's round-trip time, or 503 with the reason while the store does not answer or fails."""
        body: dict[str, Any] = {"host_id": self.allocator.settings.host_id}
        started = time.perf_counter()
        try:
            self.allocator.store.ping()
        except StoreError as exc:
            # "unreachable": no answer (come back when it does); "failing": it answered with a failure, such as a
            # full disk under a file store, whose message says what to do.
            unreachable = isinstance(exc, StoreUnavailable)
            body.update(status="unavailable", store="unreachable" if unreachable else "failing", error=str(exc))
            if unreachable:
                body["advice"] = STORE_ADVICE
            return 503, body
        body.update(
            status="ok", store="reachable", store_round_trip_ms=round((time.perf_counter() - started) * 1000, 3)
        )
        twin = getattr(self.presence, "twin", None)
        if twin is not None:
            body.update(status="warning", twin=f"another live driver uses host id {body['host_id']!r}: {twin}")
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
