"""Finding and fixing leaks between this host's claims and what its Docker engine uses.

Two kinds of leak:

* *leaked*: claimed here, unused by the engine (a network or container removed while
  the driver was down or failing). ``apply`` releases those older than the grace
  period, after checking again that the engine still does not use them.
* *missing*: used by the engine, unknown to the store (a lost state file, a flushed
  Redis). ``apply`` claims them again; one that now conflicts with another claim is
  reported, never forced.

The claims are read before the engine's state, so a network created in between
is never taken for a leak, and nothing the engine uses is ever released. A
gateway's address is taken as used while its network exists: the engine does not
always show it. Reconciling never runs inside a plugin request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mini_ipam.allocator import GATEWAY_NOTE
from mini_ipam.claims import ClaimBook, ClaimRefused, HeldPool
from mini_ipam.docker_engine import EngineSubnet


class EngineView(Protocol):
    """What reconciling needs of an engine (``mini_ipam.docker_engine.Engine``)."""

    def subnets(self, driver: str) -> list[EngineSubnet]:
        """Every subnet of the networks that use ``driver``, with the addresses in use."""
        ...


@dataclass(frozen=True)
class Finding:
    """One difference between the store and the engine, and what was done about it."""

    kind: str  # "leaked pool", "leaked address", "missing pool", "missing address"
    pool_id: str
    address: str | None = None
    network: str | None = None
    age_seconds: float | None = None
    action: str = "none"  # "released", "claimed", "kept (younger than the grace period)", "conflict: ..."


@dataclass
class Report:
    """Everything a reconcile run found."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def unresolved(self) -> list[Finding]:
        """Findings that still stand."""
        return [f for f in self.findings if f.action not in ("released", "claimed")]


class Reconciler:
    """Compares and fixes one host's claims against its engine."""

    def __init__(self, claims: ClaimBook, engine: EngineView, driver: str, grace: float = 600.0) -> None:
        self.claims = claims
        self.engine = engine
        self.driver = driver
        self.grace = grace

    def run(self, apply: bool = False) -> Report:
        """Find the leaks; with ``apply``, fix what may be fixed."""
        claims = self.claims.held()  # before the engine's state: see the module docstring
        used = {s.pool_id: s for s in self.engine.subnets(self.driver)}
        report = Report()
        now = time.time()
        leaked: list[Finding] = []
        for pool_id, claim in claims.items():
            subnet = used.get(pool_id)
            if subnet is None:
                leaked.append(Finding("leaked pool", pool_id, age_seconds=now - claim.since))
                continue
            for address, (since, note) in claim.addresses.items():
                if address not in subnet.addresses and note != GATEWAY_NOTE:
                    leaked.append(Finding("leaked address", pool_id, address, subnet.network, now - since))
        missing: list[Finding] = []
        for pool_id, subnet in used.items():
            held = claims.get(pool_id)
            if held is None:
                missing.append(Finding("missing pool", pool_id, network=subnet.network))
                missing.extend(Finding("missing address", pool_id, a, subnet.network) for a in sorted(subnet.addresses))
                continue
            missing.extend(
                Finding("missing address", pool_id, a, subnet.network)
                for a in sorted(subnet.addresses - held.addresses.keys())
            )
        if not apply:
            report.findings = leaked + missing
            return report
        report.findings = self._release(leaked, claims) + self._claim(missing, used)
        return report

    def _release(self, leaked: Sequence[Finding], claims: dict[str, HeldPool]) -> list[Finding]:
        old = [f for f in leaked if (f.age_seconds or 0) >= self.grace]
        done = [_with(f, "kept (younger than the grace period)") for f in leaked if f not in old]
        if not old:
            return done
        # Look again right before releasing: never release what the engine has started to use.
        again = {s.pool_id: s for s in self.engine.subnets(self.driver)}
        for finding in old:
            subnet = again.get(finding.pool_id)
            if subnet is not None and (finding.address is None or finding.address in subnet.addresses):
                done.append(_with(finding, "kept (the engine uses it now)"))
                continue
            try:
                if finding.address is None:
                    self._release_gateways(claims[finding.pool_id])
                self.claims.release(finding.pool_id, finding.address)
            except ClaimRefused as exc:
                done.append(_with(finding, f"failed: {exc}"))
            else:
                done.append(_with(finding, "released"))
        return done

    def _release_gateways(self, pool: HeldPool) -> None:
        """Release a pool's gateway first, as Docker does: a shared pool is kept while its gateway is claimed."""
        for address, (_, note) in sorted(pool.addresses.items()):
            if note == GATEWAY_NOTE:
                self.claims.release(pool.pool_id, address)

    def _claim(self, missing: Sequence[Finding], used: dict[str, EngineSubnet]) -> list[Finding]:
        done: list[Finding] = []
        refused: set[str] = set()
        for finding in missing:
            if finding.pool_id in refused:
                done.append(_with(finding, "not claimed: its pool could not be"))
                continue
            gateway = finding.address is not None and used[finding.pool_id].gateway == finding.address
            try:
                self.claims.claim(finding.pool_id, finding.address, gateway)
            except ClaimRefused as exc:
                if finding.address is None:
                    refused.add(finding.pool_id)
                done.append(_with(finding, f"conflict: {exc}"))
            else:
                done.append(_with(finding, "claimed"))
        return done


def _with(finding: Finding, action: str) -> Finding:
    return Finding(finding.kind, finding.pool_id, finding.address, finding.network, finding.age_seconds, action)
