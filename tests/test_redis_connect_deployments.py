"""The Redis store over Sentinel and Redis Cluster, on the real deployments of ``tests.redis_deployments``.

One Sentinel setup and one Cluster per server family and module; a test that
fails a node over brings it back before it ends, so the next test finds the
deployment whole again.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stores.base import AnySubnet, ConfigurationError, Granted, StoreError, StoreUnavailable
from stores.redis import RedisStore
from tests.redis_deployments import SERVICE, ClusterSetup, SentinelSetup
from tests.servers import ServerFamily, family_params

pytestmark = [pytest.mark.slow]

PARENT = (ipaddress.ip_network("10.0.0.0/8"),)
TIMEOUT = 1.0
SLACK = 0.5
"""How much longer than the store timeout a failing call may take (the machine is shared and slow)."""

SENTINEL_PASSWORD = "watchers-secret"
_prefixes = iter(range(10**6))


def fresh_prefix() -> str:
    return f"t{next(_prefixes)}"


@pytest.fixture(scope="module", params=family_params())
def sentinel(request: pytest.FixtureRequest) -> Iterator[SentinelSetup]:
    family: ServerFamily = request.param
    family.require()
    with SentinelSetup(family, replicas=2, sentinel_password=SENTINEL_PASSWORD) as setup:
        yield setup


@pytest.fixture(scope="module", params=family_params())
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterSetup]:
    family: ServerFamily = request.param
    family.require()
    with ClusterSetup(family, replicas=1) as setup:
        yield setup


def sentinel_url(setup: SentinelSetup, prefix: str, query: str = "") -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in setup.sentinel_addresses)
    return f"redis+sentinel://{hosts}/{SERVICE}?prefix={prefix}&sentinel_password={SENTINEL_PASSWORD}{query}"


def cluster_url(seeds: list[tuple[str, int]], prefix: str, query: str = "") -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in seeds)
    return f"redis+cluster://{hosts}?prefix={prefix}{query}"


def claim(store: RedisStore, owner: str = "h1") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    granted = store.open_pool(AnySubnet(PARENT, 24), scope=owner, label="local", owner=owner)
    assert isinstance(granted, Granted), granted
    return granted.pool.block.subnet


def ride_through(action: Callable[[], Any], until: float = 60.0) -> tuple[Any, list[tuple[float, str]]]:
    """Call ``action`` until it succeeds; every failure must be a fast StoreUnavailable. The result and the failures."""
    failures: list[tuple[float, str]] = []
    deadline = time.monotonic() + until
    while True:
        started = time.monotonic()
        try:
            return action(), failures
        except StoreUnavailable as exc:
            took = time.monotonic() - started
            failures.append((took, str(exc)))
            assert took < TIMEOUT + SLACK, f"a failing call took {took:.2f}s: {exc}"
            assert "MOVED" not in str(exc) and "ASK " not in str(exc)
        assert time.monotonic() < deadline, f"no success within {until}s: {failures[-3:]}"
        time.sleep(0.05)


# -- Sentinel ----------------------------------------------------------------------------


def test_a_sentinel_store_works_on_the_primary_the_sentinels_name(sentinel: SentinelSetup) -> None:
    store = RedisStore.from_url(sentinel_url(sentinel, fresh_prefix()), timeout=TIMEOUT, member="h1")
    try:
        first, second = claim(store), claim(store)
        assert first != second
        assert {block.subnet for block in store.blocks()} == {first, second}
        assert {pool.subnet for pool in store.pools()} == {first, second}
        assert sentinel.primary.call("EXISTS", f"{{{store.prefix}}}:slot:{first}") == 1
        assert SENTINEL_PASSWORD not in repr(store) and SENTINEL_PASSWORD not in store.where
    finally:
        store.close()


def test_sentinels_that_want_a_password_refuse_a_url_without_it_clearly(sentinel: SentinelSetup) -> None:
    hosts = ",".join(f"{host}:{port}" for host, port in sentinel.sentinel_addresses)
    store = RedisStore.from_url(f"redis+sentinel://{hosts}/{SERVICE}?prefix=x", timeout=TIMEOUT)
    try:
        with pytest.raises(StoreUnavailable, match="the sentinels refused the credentials.*sentinel_password"):
            store.ping()
    finally:
        store.close()


def test_a_wrong_service_name_is_a_clear_unavailability(sentinel: SentinelSetup) -> None:
    hosts = ",".join(f"{host}:{port}" for host, port in sentinel.sentinel_addresses)
    url = f"redis+sentinel://{hosts}/no-such-service?sentinel_password={SENTINEL_PASSWORD}"
    store = RedisStore.from_url(url, timeout=TIMEOUT)
    try:
        with pytest.raises(StoreUnavailable, match="names a primary now"):
            store.ping()
    finally:
        store.close()


def test_a_sentinel_failover_is_ridden_through_and_nothing_is_handed_out_twice(sentinel: SentinelSetup) -> None:
    store = RedisStore.from_url(
        sentinel_url(sentinel, fresh_prefix(), "&wait_replicas=1&wait_timeout=300ms"), timeout=TIMEOUT, member="h1"
    )
    try:
        before = [claim(store) for _ in range(3)]
        old = sentinel.kill_primary()
        try:
            during, failures = ride_through(lambda: claim(store))
            new = sentinel.primary
        finally:
            sentinel.bring_back(old)
        assert new is not old and failures, "the first call after the kill must fail, fast"
        after = claim(store)
        held = {block.subnet for block in store.blocks()}
        assert held == {*before, during, after}
        assert len({*before, during, after}) == 5  # no subnet twice
        assert new.call("EXISTS", f"{{{store.prefix}}}:map") == 1
    finally:
        store.close()


# -- Cluster -----------------------------------------------------------------------------


def test_every_seed_node_serves_the_same_map(cluster: ClusterSetup) -> None:
    prefix = fresh_prefix()
    opened = [RedisStore.from_url(cluster_url([seed], prefix), timeout=TIMEOUT) for seed in cluster.seeds]
    try:
        claimed = [claim(store, owner=f"h{number}") for number, store in enumerate(opened)]
        assert len(set(claimed)) == len(claimed)
        for store in opened:
            assert {block.subnet for block in store.blocks()} == set(claimed)
        owner = cluster.owner_of(cluster.slot_of(f"{{{prefix}}}:settings"))
        assert owner.call("EXISTS", f"{{{prefix}}}:slot:{claimed[0]}") == 1
    finally:
        for store in opened:
            store.close()


def test_a_plain_url_at_a_node_that_does_not_serve_the_map_says_to_name_the_cluster(cluster: ClusterSetup) -> None:
    prefix = fresh_prefix()
    owner = cluster.owner_of(cluster.slot_of(f"{{{prefix}}}:settings"))
    other = next(node for node in cluster.masters if node is not owner)
    store = RedisStore.from_url(f"redis://{other.name}/0?prefix={prefix}", timeout=TIMEOUT)
    try:
        with pytest.raises(StoreError, match="Redis Cluster node that does not serve the map's slot.*redis\\+cluster"):
            claim(store)
    finally:
        store.close()


def test_cluster_failovers_and_a_reshard_are_followed(cluster: ClusterSetup) -> None:
    prefix = fresh_prefix()
    slot = cluster.slot_of(f"{{{prefix}}}:settings")
    store = RedisStore.from_url(cluster_url(cluster.seeds[:1], prefix), timeout=TIMEOUT, member="h1")
    try:
        held = [claim(store)]
        cluster.fail_over(slot, kill=False)  # CLUSTER FAILOVER: the old owner answers MOVED now
        got, _ = ride_through(lambda: claim(store))
        held.append(got)
        old, new = cluster.fail_over(slot, kill=True)
        try:
            got, failures = ride_through(lambda: claim(store))
            held.append(got)
        finally:
            cluster.bring_back(old)
            cluster.wait_replicating(old, new)  # the next test fails this slot over again
        assert cluster.owner_of(slot) is new
        target = next(node for node in cluster.masters if node is not new)
        cluster.reshard(slot, target)  # every key of the map moves: the old owner answers MOVED
        got, failures = ride_through(lambda: claim(store))
        held.append(got)
        assert len(failures) <= 1  # the first connection to the new owner is refused: another server
        assert len(set(held)) == len(held) == 4
        assert {block.subnet for block in store.blocks()} == set(held)
        assert {pool.subnet for pool in store.pools()} == set(held)
        assert target.call("EXISTS", f"{{{prefix}}}:map") == 1
    finally:
        store.close()


def test_a_durable_ack_on_a_cluster_waits_for_the_replica_of_the_map_s_owner(cluster: ClusterSetup) -> None:
    prefix = fresh_prefix()
    slot = cluster.slot_of(f"{{{prefix}}}:settings")
    url = cluster_url(cluster.seeds, prefix, "&wait_replicas=1&wait_timeout=200ms")
    store = RedisStore.from_url(url, timeout=TIMEOUT, member="h1")
    try:
        first = claim(store)
        owner = cluster.owner_of(slot)
        (replica,) = cluster.replicas_of(owner)
        replica.kill()  # every other master still has its replica: a WAIT sent there would say 1
        try:
            with pytest.raises(StoreUnavailable, match="0 replicas acknowledged it"):
                claim(store)
        finally:
            cluster.bring_back(replica)
            cluster.wait_replicating(replica, owner)
        second = claim(store)
        assert {block.subnet for block in store.blocks()} == {first, second}  # the refused one was undone
    finally:
        store.close()


def test_a_cluster_url_with_a_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="only database 0"):
        RedisStore.from_url("redis+cluster://127.0.0.1:7000/3")


@pytest.mark.parametrize("first", ["anchor", "tree"])
def test_while_the_map_s_slot_migrates_no_call_sees_half_a_map(cluster: ClusterSetup, first: str) -> None:
    """Some keys of the map on the importing node, the rest still on the migrating one: refused, never a duplicate.

    ``anchor``: the key every script call names (and the map's identity) arrived first, so
    the migrating node answers ASK; a script sent on to the importing node would find
    no tree there and hand out the first blocks again. ``tree``: the tree left first; a
    script on the migrating node touches it and the server refuses the script.
    """
    prefix = fresh_prefix()
    slot = cluster.slot_of(f"{{{prefix}}}:settings")
    store = RedisStore.from_url(cluster_url(cluster.seeds, prefix), timeout=TIMEOUT, member="h1")
    try:
        store.make_setting("kept", "1")  # the anchor key exists
        held = [claim(store) for _ in range(3)]
        target = next(node for node in cluster.masters if node is not cluster.owner_of(slot))
        source = cluster.begin_migration(slot, target)
        wanted = {"anchor": (":settings", ":map"), "tree": (":tree:", ":slot:")}[first]
        keys = [key for key in source.call("CLUSTER", "GETKEYSINSLOT", slot, 1000) if key.endswith(wanted) or any(
            part in key for part in wanted)]  # fmt: skip
        cluster.move_keys(slot, source, target, keys)
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="moving the map's slot|being moved"):
                claim(store)
        with pytest.raises(StoreUnavailable, match="moving the map's slot|being moved"):
            store.blocks()  # a listing that would miss the keys on their way
        cluster.move_keys(slot, source, target)
        cluster.finish_migration(slot, source, target)
        got, _ = ride_through(lambda: claim(store))
        held.append(got)
        assert len(set(held)) == 4
        assert {block.subnet for block in store.blocks()} == set(held)
    finally:
        store.close()
