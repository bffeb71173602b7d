"""Reconciling claims with an engine's view, over every store (the engine here is a stand-in; see
tests/e2e for the same against a real engine)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.claims import StoreClaims
from mini_ipam.docker_engine import EngineSubnet
from mini_ipam.pool_id import PoolId
from mini_ipam.reconciler import Reconciler
from stores import Store
from tests.helpers import addresses_of

net = ipaddress.ip_network
ip = ipaddress.ip_address


class StandInEngine:
    """An engine view whose networks the test sets; ``during_recheck`` changes them between the two looks."""

    def __init__(self) -> None:
        self.networks: list[EngineSubnet] = []
        self.looks = 0
        self.during_recheck: Callable[[], None] | None = None

    def subnets(self, driver: str) -> list[EngineSubnet]:
        assert driver == "mini"
        self.looks += 1
        if self.looks == 2 and self.during_recheck is not None:
            self.during_recheck()
        return list(self.networks)


def uses(name: str, subnet: str, *addresses: str, gateway: str | None = None) -> EngineSubnet:
    used = set(addresses) | ({gateway} if gateway else set())
    return EngineSubnet(name, subnet, None, gateway, frozenset(used))


@pytest.fixture
def allocator(store: Store) -> Allocator:
    return Allocator(store, Settings(parents4=(net("10.61.0.0/24"),), host_id="me"))


def network(allocator: Allocator, size: int = 28, containers: int = 1) -> tuple[PoolId, list[str]]:
    pool = allocator.request_pool(PoolRequest(space="local", size=size))
    addresses = [str(allocator.request_address(pool.pool_id, gateway=True).ip)]
    addresses += [str(allocator.request_address(pool.pool_id).ip) for _ in range(containers)]
    return pool.pool_id, addresses


def test_agreement_finds_nothing(allocator: Allocator) -> None:
    pool_id, (gateway, container) = network(allocator)
    engine = StandInEngine()
    engine.networks = [uses("net1", str(pool_id.subnet), container)]  # the engine hides the gateway here
    report = Reconciler(StoreClaims(allocator), engine, "mini").run(apply=True)
    assert report.findings == []


def test_leaks_are_listed_and_nothing_changes_without_apply(allocator: Allocator, store: Store) -> None:
    live, (gateway, container) = network(allocator)
    leaked_pool, _ = network(allocator)
    allocator.request_address(live, ip("10.61.0.9"))  # a container that went away unseen
    engine = StandInEngine()
    engine.networks = [uses("net1", str(live.subnet), container, gateway=gateway)]
    report = Reconciler(StoreClaims(allocator), engine, "mini", grace=0).run(apply=False)
    kinds = sorted((f.kind, f.pool_id, f.address) for f in report.findings)
    assert kinds == [("leaked address", str(live), "10.61.0.9"), ("leaked pool", str(leaked_pool), None)]
    assert all(f.action == "none" for f in report.findings)
    assert len(store.pools()) == 2


def test_apply_releases_old_leaks_and_keeps_live_networks(allocator: Allocator, store: Store) -> None:
    live, (gateway, container) = network(allocator)
    leaked_pool, _ = network(allocator)
    allocator.request_address(live, ip("10.61.0.9"))
    engine = StandInEngine()
    engine.networks = [uses("net1", str(live.subnet), container, gateway=gateway)]
    report = Reconciler(StoreClaims(allocator), engine, "mini", grace=0).run(apply=True)
    assert sorted(f.action for f in report.findings) == ["released", "released"]
    assert [p.subnet for p in store.pools()] == [live.subnet]
    assert [str(a) for a in addresses_of(store, live.subnet, "local@me")] == [gateway, container]
    assert not report.unresolved


def test_young_leaks_are_kept(allocator: Allocator, store: Store) -> None:
    network(allocator)
    report = Reconciler(StoreClaims(allocator), StandInEngine(), "mini", grace=600).run(apply=True)
    assert [f.action for f in report.findings] == ["kept (younger than the grace period)"]
    assert len(store.pools()) == 1
    assert report.unresolved


def test_what_the_engine_starts_using_before_the_recheck_is_kept(allocator: Allocator, store: Store) -> None:
    pool_id, (gateway, container) = network(allocator)
    engine = StandInEngine()

    def network_appears() -> None:
        engine.networks = [uses("late", str(pool_id.subnet), container, gateway=gateway)]

    engine.during_recheck = network_appears
    report = Reconciler(StoreClaims(allocator), engine, "mini", grace=0).run(apply=True)
    assert [f.action for f in report.findings] == ["kept (the engine uses it now)"]
    assert len(store.pools()) == 1


def test_missing_claims_are_claimed_again(allocator: Allocator, store: Store) -> None:
    engine = StandInEngine()
    engine.networks = [uses("lost", "10.61.0.64/27", "10.61.0.66", "10.61.0.70", gateway="10.61.0.65")]
    report = Reconciler(StoreClaims(allocator), engine, "mini").run(apply=True)
    assert sorted((f.kind, f.address, f.action) for f in report.findings) == [
        ("missing address", "10.61.0.65", "claimed"),
        ("missing address", "10.61.0.66", "claimed"),
        ("missing address", "10.61.0.70", "claimed"),
        ("missing pool", None, "claimed"),
    ]
    claims = {str(c.address): c.note for c in store.address_claims(net("10.61.0.64/27"), "local@me")}
    assert claims == {"10.61.0.65": "gateway", "10.61.0.66": "", "10.61.0.70": ""}
    # The allocator now works around them.
    assert str(allocator.request_address(PoolId.parse("local/10.61.0.64/27")).ip) == "10.61.0.67"


def test_a_missing_claim_that_now_conflicts_is_reported_not_forced(
    store_factory: Callable[[], Store],
) -> None:
    other = Allocator(store_factory(), Settings(parents4=(net("10.61.0.0/24"),), host_id="other"))
    other.request_pool(PoolRequest(space="local", subnet=net("10.61.0.0/25")))
    me = Allocator(store_factory(), Settings(parents4=(net("10.61.0.0/24"),), host_id="me"))
    engine = StandInEngine()
    engine.networks = [uses("lost", "10.61.0.0/26", "10.61.0.2")]
    report = Reconciler(StoreClaims(me), engine, "mini").run(apply=True)
    actions = {(f.kind, f.action.split(":")[0]) for f in report.findings}
    assert actions == {("missing pool", "conflict"), ("missing address", "not claimed")}
    assert "held in address space local by host other" in report.findings[0].action
    assert {p.owner for p in me.store.pools()} == {"other"}
    assert report.unresolved


def test_a_leaked_copy_of_a_swarm_network_is_released_gateway_first(
    store_factory: Callable[[], Store],
) -> None:
    """A node's copy outlived its engine's network (a crash): released the way Docker would."""
    manager = Allocator(store_factory(), Settings(parents4=(net("10.61.0.0/24"),), host_id="manager"))
    pool = manager.request_pool(PoolRequest(space="global", subnet=net("10.61.0.0/26")))
    manager.request_address(pool.pool_id, ip("10.61.0.1"), gateway=True)
    me = Allocator(store_factory(), Settings(parents4=(net("10.61.0.0/24"),), host_id="me"))
    copy = me.request_pool(PoolRequest(space="local", subnet=net("10.61.0.0/26")))
    me.request_address(copy.pool_id, ip("10.61.0.1"), gateway=True)
    me.request_address(copy.pool_id, ip("10.61.0.2"))
    report = Reconciler(StoreClaims(me), StandInEngine(), "mini", grace=0).run(apply=True)
    assert [(f.kind, f.action) for f in report.findings] == [("leaked pool", "released")]
    assert [(p.subnet, p.scope) for p in me.store.pools()] == [(net("10.61.0.0/26"), "global")]
