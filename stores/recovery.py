"""A shared map that must never hand anything out twice, even after it forgot what it held.

``RecoveringStore`` is the Store a member uses on a shared map (``RedisStore``). It
keeps the member's own ``Record`` (``stores.record``) of every pool and address the
map granted it, and it watches the map's identity:

* **Lost.** The shared store raises ``MapLost`` when a call finds the map gone, of
  another identity, or back at an older generation (flushed, evicted, restarted
  empty or from an older snapshot, a replica promoted before it had the latest
  writes, or replaced by another member's recovery). From then on this member
  claims nothing, and rebuilds: it makes a new map (or joins the one another member
  made), re-asserts every pool and address of its record into it (``restore``),
  says it is done, and adopts the new map. Conflicting re-assertions (someone else
  re-asserted an overlapping block first) are reported, never forced.
* **Recovering.** A map made after a loss, or made for the first time, hands out no
  new block until its recovery window has passed or every member it expects (the
  members alive when the loss was found) has re-asserted: the script enforces it.
* **Settling.** When a connection finds another server behind the address (a
  restart, a failover), that server may have come back from an older copy without
  this member knowing: the member whose generation is ahead will find out at its
  next call or check. So for one window after a server change this member claims
  no new block itself, and checks the map at once.
* **Checked.** ``check`` (a member's heartbeat, and the health check) reads the map's
  identity, generation and the members alive, so an idle member finds a loss too.

Releases are mirrored into the record as well; a release of something the lost
map no longer has succeeds when the record had it, so a user removing a network
while the map is being rebuilt is not refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stores.base import (
    Address,
    AddressClaim,
    AnySubnet,
    Block,
    ClosedPool,
    ExactSubnet,
    Granted,
    Lease,
    MapHealth,
    MapIdentity,
    MapLost,
    MapStatus,
    Network,
    NoFreeSubnet,
    Overlap,
    ParentUsage,
    PoolInfo,
    StoreError,
    StoreTraits,
    StoreUnavailable,
)
from stores.record import Record
from stores.redis.server import durability_warnings
from stores.redis.store import RedisStore

log = logging.getLogger("stores.recovery")

RECORD_NOTES = "record."
"""Settings of the record that are its own notes, not copies of the map's settings."""
MAP_ID = RECORD_NOTES + "map_id"
MAP_GEN = RECORD_NOTES + "map_gen"
MAP_OWN = RECORD_NOTES + "map_own"
MEMBERS = RECORD_NOTES + "members"
MAP_NAME = RECORD_NOTES + "map"
WARNINGS_EVERY = 60.0
"""Seconds between two reads of the server's persistence and eviction settings."""


class _Gate:
    """Changes pass side by side; a rebuild closes the gate and waits for the changes inside to finish.

    So a change's grant by the shared map and its entry in the record are never split by a
    rebuild reading the record: the rebuild re-asserts it, or the change reaches the new map.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._inside = 0
        self._closed = False

    def __enter__(self) -> None:
        with self._condition:
            while self._closed:
                self._condition.wait()
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        with self._condition:
            self._inside -= 1
            if not self._inside:
                self._condition.notify_all()

    def close(self) -> None:
        """Let no change in, and wait until none is inside."""
        with self._condition:
            self._closed = True
            while self._inside:
                self._condition.wait()

    def open(self) -> None:
        with self._condition:
            self._closed = False
            self._condition.notify_all()


@dataclass
class RecoveryState:
    """What the health check and the metrics report of a member's view of its map."""

    lost: str | None = None  # why the map is lost, while this member rebuilds it
    lost_total: int = 0  # how many times this member found its map lost
    rebuilt_total: int = 0
    last_rebuild: str = ""  # what the last rebuild did, in one sentence
    conflicts: list[str] = field(default_factory=list)  # re-assertions refused by the last rebuild
    conflicts_total: int = 0
    recovering_until: float | None = None  # the map hands out no new block until then (Unix time)
    settling_until: float | None = None  # this member claims no new block until then (Unix time)
    status: MapStatus | None = None  # the last look at the map
    warnings: tuple[str, ...] = ()  # why acknowledged claims might not survive the server
    warnings_read: float = 0.0  # time.monotonic() of the last read of them


class RecoveringStore:
    """A Store on a shared map, with this member's record, rebuilding the map when it is lost."""

    def __init__(
        self,
        shared: RedisStore,
        record: Record | None,
        *,
        window: float,
        alive_within: float = 60.0,
        settings: dict[str, str] | None = None,
        map_name: str = "",
    ) -> None:
        """``map_name`` names the map in the record, so that a record is never re-asserted into another map.
        ``window``: how long a rebuilt map waits for the members to re-assert, and how long this member
        settles after a server change. ``settings``: what a map made here starts with (written only where
        the map has none). Without a ``record`` nothing can be re-asserted: a loss is still found and reported.
        """
        self.shared = shared
        self.record = record
        self.window = window
        self.alive_within = alive_within
        self.state = RecoveryState()
        self._settings = dict(settings or {})
        if record is not None and map_name:
            recorded = record.setting(MAP_NAME)
            if recorded is not None and recorded != map_name:
                raise StoreError(
                    f"the local record {record.path} belongs to the map {recorded}, not {map_name}: "
                    "give this map a record of its own (--local-record)"
                )
            record.remember(MAP_NAME, map_name)
        self._lock = threading.Lock()
        self._changes = _Gate()
        self._rebuilder: threading.Thread | None = None
        self._stopping = threading.Event()
        self.listeners: list[Callable[[str, str], None]] = []
        self._started = False
        self._start_lock = threading.Lock()
        shared.auto_attach = False
        shared.watch.listen(self._server_changed)

    # -- attaching, checking, rebuilding -------------------------------------

    def start(self) -> None:
        """Attach to the map: adopt it if it is the one the record knows, else rebuild (or make) it.

        Raises the store's error when it cannot be reached; the caller may go on
        (every request then tries again).
        """
        with self._start_lock:
            if self._started:
                return
            self._start()
            self._started = True

    def _read_warnings(self) -> None:
        self.state.warnings = tuple(durability_warnings(self.shared.client))
        self.state.warnings_read = time.monotonic()

    def _start(self) -> None:
        self.shared.check_server()
        self._read_warnings()
        known = self._recorded_identity()
        status = self.shared.status(alive_within=self.alive_within)
        self.state.status = status
        found = status.identity
        if known is None:
            self._rebuild_now(None, "made or joined")
            return
        if found is None or found.id != known.id or found.gen < known.gen or found.own < known.own:
            why = "absent" if found is None else ("replaced" if found.id != known.id else "behind")
            self._lose(MapLost(f"the address map was lost while this driver was away ({why})", why, found), known)
            return
        self.shared.adopt(MapIdentity(known.id, max(known.gen, found.gen), max(known.own, found.own)))
        self.state.recovering_until = status.recovering_until

    @property
    def health(self) -> MapHealth:
        """What a health check reports of the map, as of the last look."""
        state = self.state
        settling = state.settling_until if state.settling_until and state.settling_until > time.time() else None
        return MapHealth(
            identity=self.shared.identity,
            lost=state.lost,
            lost_total=state.lost_total,
            rebuilt_total=state.rebuilt_total,
            conflicts=tuple(state.conflicts),
            conflicts_total=state.conflicts_total,
            recovering_until=state.recovering_until,
            settling_until=settling,
            warnings=state.warnings,
            last_rebuild=state.last_rebuild,
        )

    def check(self) -> MapStatus:
        """Look at the map (writing a probe: the server must take writes and run the script); start a
        rebuild if it is lost. Returns what it found; raises the store's error when it does not answer."""
        self._ensure_started()
        # What this member knew before it asked: any generation it saw came from a reply the map had
        # already sent, so a healthy map's answer is at least that far (concurrent calls go further).
        known = self.shared.identity
        status = self.shared.status(probe=True, alive_within=self.alive_within)
        if time.monotonic() - self.state.warnings_read > WARNINGS_EVERY:
            self._read_warnings()
        self.state.status = status
        self.state.recovering_until = status.recovering_until
        if self.state.settling_until is not None and time.time() >= self.state.settling_until:
            self.state.settling_until = None
        found = status.identity
        intact = known is not None and found is not None and found.id == known.id and found.gen >= known.gen
        if self.record is not None and status.alive and intact and self.state.lost is None:
            # Only a map found intact says who its members are: after a flush, the heartbeats that
            # came back first would leave out the members that have not beaten yet, and a rebuild
            # would then not wait for their claims.
            self.record.remember(MEMBERS, " ".join(sorted(status.alive)))
        if known is not None and self.state.lost is None:
            if found is None:
                self._lose(MapLost("the address map has no identity any more", "absent", None), known)
            elif found.id != known.id:
                self._lose(MapLost(f"the address map is another map now (id {found.id})", "replaced", found), known)
            elif found.gen < known.gen or found.own < known.own:
                self._lose(MapLost(f"the address map went back to generation {found.gen}", "behind", found), known)
            elif self.record is not None:
                self.record.remember(MAP_GEN, str(known.gen))
                self.record.remember(MAP_OWN, str(known.own))
        return status

    def _server_changed(self, old: str | None, new: str) -> None:
        """A connection found another server: settle for a window, and look at the map at once."""
        if self.window > 0:
            self.state.settling_until = time.time() + self.window
        log.warning(
            "the store's server changed (run id %s, was %s): it restarted, or another took over; no new subnet "
            "for %.0fs unless the map proves intact, in case it came back from an older copy",
            new,
            old,
            self.window,
        )
        threading.Thread(target=self._check_quietly, name="mini-ipam-map-check", daemon=True).start()

    def _check_quietly(self) -> None:
        try:
            self.check()
        except StoreError as exc:
            log.debug("map check after a server change failed: %s", exc)

    def _lose(self, exc: MapLost, known: MapIdentity | None = None) -> None:
        """Note the loss once, and rebuild in the background (one rebuild at a time)."""
        with self._lock:
            if self.state.lost is not None:
                return
            self.state.lost = str(exc)
            self.state.lost_total += 1
            known = known if known is not None else self.shared.identity
            log.error(
                "%s. This driver claims nothing until the map is rebuilt: it re-asserts its own %d pools now, "
                "and waits up to %.0fs for the other hosts to re-assert theirs. If a host's driver is gone for "
                "good, run 'mini-ipam reconcile --apply' on it to claim what its engine uses.",
                exc,
                self._recorded_pools(),
                self.window,
            )
            for listener in self.listeners:
                listener("lost", str(exc))
            self._rebuilder = threading.Thread(
                target=self._rebuild_until_done, args=(known,), name="mini-ipam-rebuild", daemon=True
            )
            self._rebuilder.start()

    def _rebuild_until_done(self, known: MapIdentity | None) -> None:
        while not self._stopping.is_set():
            self._changes.close()
            try:
                self._rebuild_now(known, "rebuilt")
                return
            except StoreError as exc:
                log.warning("rebuilding the address map failed, trying again in 1s: %s", exc)
            except Exception:  # a bug: never leave the driver refusing for good without saying why
                log.exception("rebuilding the address map failed, trying again in 1s")
            finally:
                self._changes.open()
            self._stopping.wait(1.0)

    def _rebuild_now(self, known: MapIdentity | None, verb: str) -> None:
        """Make or join the map, re-assert the record into it, and adopt it."""
        settings = dict(self._settings)
        expect: Sequence[str] = ()
        if self.record is not None:
            settings.update(self._recorded_settings())
            # A member that knows of nobody cannot tell who else may have held claims: it waits the window out.
            known_members = set((self.record.setting(MEMBERS) or "").split())
            expect = sorted((known_members | {self.shared.member}) - {""}) if known_members else ()
        status, made = self.shared.recover(known, window=self.window, expect=expect, settings=settings)
        identity = status.identity
        assert identity is not None
        conflicts: list[str] = []
        pools = addresses = discarded = 0
        if self.record is not None:
            for name, value in self._recorded_settings().items():
                stored = self.shared.restore_setting(name, value, identity)
                if stored != value:
                    conflicts.append(f"setting {name}: the map has {stored}, this host had {value}")
            if known is None:
                # A record that knew no map (a first start, a record deleted or moved, an upgrade from a
                # version that kept none) is no list of what this member holds: what the map holds for
                # it is real, so nothing is dropped, and the record learns it once adopted (below).
                self.shared.cleaned(identity)
            else:
                discarded = self._discard_ghosts(identity)
            refused: list[tuple[PoolInfo, list[AddressClaim], Block]] = []
            for attempt in range(2):
                todo = list(self.record.holdings()) if attempt == 0 else [(p, c) for p, c, _ in refused]
                refused = []
                for pool, claims in todo:
                    result = self.shared.restore(pool, claims, identity)
                    if isinstance(result, Overlap):
                        refused.append((pool, claims, result.holder))
                    else:
                        pools += 1
                        addresses += result
                if not refused or attempt or not self._wait_for_owners({b.owner for _, _, b in refused}):
                    break
            conflicts += [
                f"{pool.subnet} ({pool.scope}, {len(claims)} addresses) overlaps {holder.subnet}, "
                f"held by {holder.owner}"
                for pool, claims, holder in refused
            ]
        until = self.shared.restored(identity)
        self.shared.adopt(identity)
        if known is None and self.record is not None:
            self._adopt_holdings()
        if self.record is not None:
            self.record.remember(MAP_ID, identity.id)
            self.record.remember(MAP_GEN, str(identity.gen))
            self.record.remember(MAP_OWN, "0")
        with self._lock:
            was_lost = self.state.lost is not None
            self.state.lost = None
            self.state.recovering_until = until
            self.state.conflicts = conflicts
            self.state.conflicts_total += len(conflicts)
            if was_lost:
                self.state.rebuilt_total += 1
            what = "made a new map" if made else "joined the map"
            self.state.last_rebuild = (
                f"{what} {identity.id} and re-asserted {pools} pools and {addresses} addresses"
                + (f"; dropped {discarded} pools this host had released since" if discarded else "")
                + (f"; {len(conflicts)} conflicts" if conflicts else "")
            )
        for conflict in conflicts:
            log.error("re-asserting a claim into the rebuilt map was refused: %s", conflict)
        level = logging.WARNING if was_lost else logging.INFO
        log.log(level, "%s (%s)%s", self.state.last_rebuild, verb,
                f"; it hands out new subnets from {time.strftime('%H:%M:%S', time.localtime(until))} at the latest"
                if until else "")  # fmt: skip
        for listener in self.listeners:
            listener("rebuilt", self.state.last_rebuild)

    def _adopt_holdings(self) -> None:
        """Copy into the record the pools (with their addresses) that the map holds for this member."""
        assert self.record is not None
        member = self.shared.member
        for pool in self.shared.pools():
            if pool.owner != member or self.record.pool(pool.subnet, pool.scope) is not None:
                continue
            self.record.keep_pool(pool)
            for claim in self.shared.address_claims(pool.subnet, pool.scope):
                self.record.keep_address(pool.subnet, pool.scope, claim)

    def _discard_ghosts(self, identity: MapIdentity) -> int:
        """Close the pools the map holds for this member that its record does not: after the map came
        back from an older copy, those are pools this member has released since (and another member
        may hold their subnets now, and be re-asserting them). Returns how many."""
        assert self.record is not None
        member = self.shared.member
        ghosts = [p for p in self.shared.pools() if p.owner == member and self.record.pool(p.subnet, p.scope) is None]
        dropped = sum(self.shared.discard(pool.subnet, pool.scope, identity) for pool in ghosts)
        self.shared.cleaned(identity)
        return dropped

    def _wait_for_owners(self, owners: set[str]) -> bool:
        """Wait until the expected members among ``owners`` have dropped what they released since, or the
        map stops recovering (at most one window); whether any of them is expected, so worth a retry."""
        deadline = time.monotonic() + max(self.window, 0.0)
        status = self.shared.status(alive_within=self.alive_within)
        if not owners & status.expected:
            return False  # not members that will re-assert: their blocks stay, and so do the conflicts
        while time.monotonic() < deadline and not self._stopping.is_set():
            if not (owners & status.expected) - status.cleaned or status.recovering_until is None:
                break
            self._stopping.wait(0.05)
            status = self.shared.status(alive_within=self.alive_within)
        return True

    def _recorded_identity(self) -> MapIdentity | None:
        if self.record is None:
            return None
        map_id = self.record.setting(MAP_ID)
        if not map_id:
            return None
        return MapIdentity(map_id, int(self.record.setting(MAP_GEN) or 0), int(self.record.setting(MAP_OWN) or 0))

    def _recorded_settings(self) -> dict[str, str]:
        assert self.record is not None
        return {k: v for k, v in self.record.all_settings().items() if not k.startswith(RECORD_NOTES)}

    def _recorded_pools(self) -> int:
        return 0 if self.record is None else len(self.record.pools())

    def _ensure_started(self) -> None:
        if not self._started:
            self.start()  # it did not answer when the driver started: attach before anything else

    def _refuse_while_lost(self) -> None:
        self._ensure_started()
        lost = self.state.lost
        if lost is not None:
            raise MapLost(
                f"{lost}; this driver is re-asserting its claims into a rebuilt map and claims nothing until then",
                "rebuilding",
                None,
            )

    def _refuse_while_settling(self) -> None:
        until = self.state.settling_until
        if until is not None:
            left = until - time.time()
            if left > 0:
                raise StoreUnavailable(
                    "the store's server changed (it restarted, or another took over): no new subnet for "
                    f"{left:.0f}s more, in case it came back from an older copy of the map "
                    "(addresses in existing networks are handed out as usual)"
                )
            self.state.settling_until = None

    # -- the Store protocol ----------------------------------------------------

    def _shared(self, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the shared store; a MapLost starts the rebuild and is raised on."""
        try:
            return operation(*args, **kwargs)
        except MapLost as exc:
            self._lose(exc)
            raise

    def open_pool(
        self,
        target: ExactSubnet | AnySubnet,
        *,
        scope: str,
        label: str,
        owner: str,
        share_label: str | None = None,
    ) -> Granted | Overlap | NoFreeSubnet:
        self._ensure_started()
        with self._changes:
            self._refuse_while_lost()
            self._refuse_while_settling()
            result: Granted | Overlap | NoFreeSubnet = self._shared(
                self.shared.open_pool, target, scope=scope, label=label, owner=owner, share_label=share_label
            )
            if isinstance(result, Granted) and self.record is not None:
                self.record.keep_pool(result.pool)
            return result

    def close_pool(self, subnet: Network, scope: str) -> ClosedPool | None:
        self._ensure_started()
        recorded: PoolInfo | None = None
        with self._changes:
            try:
                closed: ClosedPool | None = self._shared(self.shared.close_pool, subnet, scope)
            except MapLost:
                closed = None
            finally:
                # Whatever the map answered, the engine is done with it (a network is being removed):
                # a pool whose release may or may not have landed must never be re-asserted.
                recorded = self.record.drop_pool(subnet, scope) if self.record is not None else None
        if closed is None and recorded is not None:
            return ClosedPool(recorded, freed=True)  # the lost map no longer had it: released all the same
        if closed is None and self.state.lost is not None:
            self._refuse_while_lost()
        return closed

    def pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        """The pool; while the map is lost, as this host's record has it (a release reads it first)."""
        self._ensure_started()
        if self.state.lost is not None and self.record is not None:
            return self.record.pool(subnet, scope)
        try:
            found: PoolInfo | None = self._shared(self.shared.pool, subnet, scope)
        except MapLost:
            if self.record is None:
                raise
            return self.record.pool(subnet, scope)
        return found

    def claim_address(self, subnet: Network, scope: str, address: Address, note: str = "") -> bool:
        self._ensure_started()
        with self._changes:
            self._refuse_while_lost()
            claimed: bool = self._shared(self.shared.claim_address, subnet, scope, address, note)
            if self.record is not None:
                # Claimed now, or already (the same host's, or a replay in a shared pool): either way held.
                self.record.keep_address(subnet, scope, AddressClaim(address, time.time(), note))
            return claimed

    def claim_next_address(
        self, subnet: Network, scope: str, first: Address, last: Address, serial: bool, note: str = ""
    ) -> Address | None:
        self._refuse_while_lost()
        found: Address | None = self._shared(self.shared.claim_next_address, subnet, scope, first, last, serial, note)
        if found is not None and self.record is not None:
            self.record.keep_address(subnet, scope, AddressClaim(found, time.time(), note))
        return found

    def release_address(self, subnet: Network, scope: str, address: Address) -> bool:
        self._ensure_started()
        recorded = False
        with self._changes:
            try:
                released: bool = self._shared(self.shared.release_address, subnet, scope, address)
            except MapLost:
                released = False
            finally:
                # As for pools: the engine is done with the address, whatever the map answered.
                recorded = self.record.drop_address(subnet, scope, int(address)) if self.record is not None else False
        if not released and not recorded and self.state.lost is not None:
            self._refuse_while_lost()
        return released or recorded

    def blocks(self) -> list[Block]:
        found: list[Block] = self._shared(self.shared.blocks)
        return found

    def pools(self) -> list[PoolInfo]:
        found: list[PoolInfo] = self._shared(self.shared.pools)
        return found

    def usage(self, parents: Sequence[Network]) -> list[ParentUsage] | None:
        """The shared map's counters (see ``RedisStore.usage``)."""
        counted: list[ParentUsage] | None = self._shared(self.shared.usage, parents)
        return counted

    def address_claims(self, subnet: Network, scope: str) -> list[AddressClaim]:
        """The pool's claims; while the map is lost, as this host's record has them."""
        self._ensure_started()
        if self.state.lost is not None and self.record is not None:
            return self.record.address_claims(subnet, scope)
        try:
            found: list[AddressClaim] = self._shared(self.shared.address_claims, subnet, scope)
        except MapLost:
            if self.record is None:
                raise
            return self.record.address_claims(subnet, scope)
        return found

    def ping(self) -> None:
        self.check()

    def setting(self, name: str) -> str | None:
        value: str | None = self._shared(self.shared.setting, name)
        if value is not None and self.record is not None:
            self.record.remember(name, value)
        return value

    def make_setting(self, name: str, value: str) -> str:
        self._ensure_started()
        with self._changes:
            self._refuse_while_lost()
            stored: str = self._shared(self.shared.make_setting, name, value)
            if self.record is not None:
                self.record.remember(name, stored)
            return stored

    def close(self) -> None:
        self._stopping.set()
        if self._rebuilder is not None:
            self._rebuilder.join(timeout=5)
        try:
            self.shared.close()
        finally:
            if self.record is not None:
                self.record.close()

    @property
    def traits(self) -> StoreTraits:
        return self.shared.traits

    def lease(self, name: str, record: dict[str, Any], ttl: float) -> Lease | None:
        return self.shared.lease(name, record, ttl)
