"""Host presence on a shared store: tell a twin (two live drivers with one host id) from a restart.

Claims are owned by a host id, and cloned machines often share a hostname, so two
live drivers could believe they are the same host and release each other's
networks. Each driver therefore holds a lease named by its host id on the shared
store (``stores.base.Lease``), renewed every ``ttl / 3``.

A renewal that finds the lease held by another instance whose ``beat`` counter
moved since the last look has found a live twin, reported by both: the finder
posts a note under the name, which the holder reads at its own next renewal. A
lease whose counter stands still belongs to a driver that died (a restart after a
crash); it is taken over once it expires and never reported.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stores import Lease, Store

log = logging.getLogger("mini_ipam.presence")

CHECKS_PER_TTL = 15
"""How often per lease time to live the heartbeat thread looks at the shared map (every 2 s by default;
the lease itself renews every ttl / 3)."""


def check_interval(ttl: float) -> float:
    """Seconds between two looks at the shared map, for a lease time to live of ``ttl``."""
    return ttl / CHECKS_PER_TTL


@dataclass(frozen=True)
class Twin:
    """Another live driver with the same host id."""

    instance: str
    pid: int
    node: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.node} (instance {self.instance})"

    @classmethod
    def of(cls, record: dict[str, Any]) -> Twin:
        """The twin a lease record describes."""
        return cls(str(record["instance"]), int(record.get("pid", 0)), str(record.get("node", "?")))


class HostPresence:
    """The heartbeat of one driver process; ``twin`` is set while a twin is alive."""

    def __init__(
        self,
        lease_of: Store,
        host_id: str,
        ttl: float = 30.0,
        also: Sequence[Callable[[], object]] = (),
        also_every: float | None = None,
    ) -> None:
        """Keep ``host_id``'s lease on the shared store ``lease_of`` (ValueError for a store no other host shares).

        ``also``: what else to do, every ``also_every`` seconds (default ``check_interval(ttl)``): the
        driver looks at its map, so that an idle driver finds a lost map within seconds too, and knows
        which hosts are alive should it ever have to rebuild the map.
        """
        self._also = tuple(also)
        self._also_every = min(check_interval(ttl) if also_every is None else also_every, ttl / 3)
        self.host_id = host_id
        self.ttl = ttl
        self.instance = uuid.uuid4().hex
        self.twin: Twin | None = None
        self._record = {"instance": self.instance, "pid": os.getpid(), "node": socket.gethostname(),
                        "started": time.time()}  # fmt: skip
        lease: Lease | None = lease_of.lease(host_id, self._record, ttl)
        if lease is None:
            raise ValueError(f"{lease_of!r} is used by one host only: there is no presence to keep")
        self._lease = lease
        self._seen: tuple[str, int] | None = None  # (instance, beat) of another holder, last look
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> Twin | None:
        """One heartbeat. Returns the twin if one is alive. Raises the store client's errors."""
        state = self._lease.renew()
        twin: Twin | None = None
        if not state.held and state.holder is not None:
            seen = (str(state.holder["instance"]), int(state.holder.get("beat", 0)))
            if self._seen is not None and self._seen[0] == seen[0] and seen[1] > self._seen[1]:
                twin = Twin.of(state.holder)
                self._lease.post(self._record)  # tell the holder too: it never sees our beats, only its lease
            self._seen = seen
        elif state.note is not None and state.note.get("instance") != self.instance:
            twin = Twin.of(state.note)
        if twin is not None and self.twin is None:
            log.error(
                "another live mini-ipam uses host id %r on this store: %s. Both will act on the same claims; "
                "give every host its own --host-id",
                self.host_id,
                twin,
            )
        elif twin is None and self.twin is not None:
            log.warning("the other mini-ipam with host id %r is gone", self.host_id)
        self.twin = twin
        return twin

    def start(self, interval: float | None = None) -> None:
        """Beat every ``interval`` seconds (default ttl/3), and do the ``also`` steps, in a daemon thread."""
        period = self.ttl / 3 if interval is None else interval
        tick = min(period, self._also_every) if self._also else period

        def run() -> None:
            next_beat = 0.0
            while not self._stop.is_set():
                steps = list(self._also)
                if time.monotonic() >= next_beat:
                    steps.insert(0, self.beat)
                    next_beat = time.monotonic() + period
                for step in steps:
                    try:
                        step()
                    except Exception as exc:  # the store is away: the next beat tries again, /healthz says why
                        log.debug("heartbeat failed: %s", exc)
                self._stop.wait(tick)

        self._thread = threading.Thread(target=run, name="mini-ipam-presence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and give the lease up, so a restart need not wait for it to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._lease.release()
        except Exception as exc:  # stopping must succeed when the store is away; the lease then expires
            log.debug("could not give the lease up: %s", exc)
