"""The deployments of ``tests.redis_deployments`` work, and each fault does what it says, on every server family.

Plain redis-py clients only (``redis.Redis``, ``redis.sentinel.Sentinel``,
``redis.cluster.RedisCluster``): these tests check the test ground, not the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from tests.redis_deployments import (
    AOF_ALWAYS,
    AOF_EVERYSEC,
    NO_PERSISTENCE,
    RDB_ON_REQUEST,
    SERVICE,
    ClusterSetup,
    SentinelSetup,
    Standalone,
)
from tests.servers import ServerFamily, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

MAP_KEY = "{mini-ipam}:settings"
"""A key of the map: every key of mini-ipam's default map shares its hash slot."""


def keys(client: redis.Redis) -> set[str]:
    return {key.decode() for key in client.keys("*")}


def set_and_wait(client: redis.Redis, key: str, replicas: int = 1, timeout_ms: int = 5000) -> int:
    """SET ``key``, then WAIT on the same connection (one pipeline); returns how many replicas have the write.

    WAIT counts the replicas that have every write of *its own connection*: on
    another connection, it would not wait for this write at all.
    """
    pipe = client.pipeline(transaction=False)
    pipe.set(key, "1")
    pipe.execute_command("WAIT", replicas, timeout_ms)
    _, acknowledged = pipe.execute()
    return int(acknowledged)


# -- standalone -----------------------------------------------------------------------------


def test_a_standalone_server_serves_its_port_and_its_unix_socket(redis_family: ServerFamily) -> None:
    with Standalone(redis_family) as server:
        by_port = redis.Redis.from_url(server.url)
        by_socket = redis.Redis.from_url(server.unix_url)
        try:
            by_port.set("written", "over tcp")
            assert by_socket.get("written") == b"over tcp"
            version = by_socket.info("server").get("valkey_version") or by_socket.info("server")["redis_version"]
            assert version == redis_family.version
        finally:
            by_port.close()
            by_socket.close()


def test_without_persistence_a_kill_or_a_clean_restart_comes_back_empty(redis_family: ServerFamily) -> None:
    with Standalone(redis_family, NO_PERSISTENCE) as server:
        server.server.call("SET", "a", "1")
        server.kill()
        server.restart()
        assert server.server.call("DBSIZE") == 0
        server.server.call("SET", "b", "1")
        server.stop()
        server.restart()
        assert server.server.call("DBSIZE") == 0


def test_a_restart_from_rdb_comes_back_with_the_last_snapshot_only(redis_family: ServerFamily) -> None:
    with Standalone(redis_family, RDB_ON_REQUEST) as server:
        server.server.call("SET", "before-snapshot", "1")
        server.snapshot()
        server.server.call("SET", "after-snapshot", "1")
        server.kill()
        server.restart()
        assert keys(server.server.client()) == {"before-snapshot"}


def test_flushall_empties_the_server_and_a_restart_brings_back_the_older_snapshot(redis_family: ServerFamily) -> None:
    with Standalone(redis_family, RDB_ON_REQUEST) as server:
        server.server.call("SET", "snapshotted", "1")
        server.snapshot()
        server.flushall()
        assert server.server.call("DBSIZE") == 0
        server.kill()  # without save points, FLUSHALL wrote no new snapshot
        server.restart()
        assert keys(server.server.client()) == {"snapshotted"}


def test_aof_always_keeps_every_acknowledged_write_through_a_kill(redis_family: ServerFamily) -> None:
    with Standalone(redis_family, AOF_ALWAYS) as server:
        client = server.server.client()
        for number in range(200):
            client.set(f"k{number}", number)
        client.close()
        server.kill()
        server.restart()
        assert server.server.call("DBSIZE") == 200
        assert server.server.call("CONFIG", "GET", "appendfsync") == ["appendfsync", "always"]


def test_aof_everysec_is_configured_and_keeps_writes_through_a_clean_restart(redis_family: ServerFamily) -> None:
    with Standalone(redis_family, AOF_EVERYSEC) as server:
        assert server.server.call("CONFIG", "GET", "appendfsync") == ["appendfsync", "everysec"]
        assert server.server.call("CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
        server.server.call("SET", "kept", "1")
        server.stop()  # a clean shutdown writes and syncs the append-only file
        server.restart()
        assert keys(server.server.client()) == {"kept"}


def test_a_paused_server_times_a_call_out_and_answers_once_resumed(redis_family: ServerFamily) -> None:
    with Standalone(redis_family) as server:
        client = server.server.client(socket_timeout=0.5)
        try:
            client.ping()
            server.pause()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            server.resume()
            wait_until(lambda: server.server.answers(), what="the resumed server to answer")
            assert client.ping()
        finally:
            client.close()


# -- Sentinel -----------------------------------------------------------------------------------


@pytest.fixture
def sentinel_setup(redis_family: ServerFamily) -> Iterator[SentinelSetup]:
    with SentinelSetup(redis_family) as setup:
        yield setup


def sentinel_client(setup: SentinelSetup) -> Sentinel:
    """A Sentinel client whose every call, to a sentinel or a data node, gives up within a second."""
    bounded = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}
    return Sentinel(setup.sentinel_addresses, sentinel_kwargs=bounded, **bounded)


def write_until_it_works(client: redis.Redis | RedisCluster, key: str, timeout: float = 60) -> list[str]:
    """SET ``key`` until a call succeeds; returns the errors seen on the way (type: message)."""
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.set(key, "1")
            return errors
        except redis.RedisError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no write went through within {timeout}s: {errors[-3:]}") from exc
            time.sleep(0.05)  # pace the retries; the loop ends on success, not on time


def test_a_sentinel_setup_serves_through_master_for_and_slave_for(sentinel_setup: SentinelSetup) -> None:
    sentinel = sentinel_client(sentinel_setup)
    primary = sentinel.master_for(SERVICE)
    replica = sentinel.slave_for(SERVICE)
    try:
        assert sentinel.discover_master(SERVICE) == sentinel_setup.primary_address()
        assert sentinel.discover_slaves(SERVICE) == [node.address for node in sentinel_setup.replicas]
        assert set_and_wait(primary, "written") == 1
        assert replica.get("written") == b"1"
        assert replica.execute_command("ROLE")[0] == b"slave"
    finally:
        primary.close()
        replica.close()
        sentinel.close()


def test_a_killed_primary_fails_over_and_master_for_finds_the_new_one(sentinel_setup: SentinelSetup) -> None:
    sentinel = sentinel_client(sentinel_setup)
    client = sentinel.master_for(SERVICE)
    try:
        assert set_and_wait(client, "acknowledged") == 1  # on the replica before the kill
        old = sentinel_setup.kill_primary()
        errors = write_until_it_works(client, "after")
        new = sentinel_setup.wait_for_failover(old.address)
        assert new is not old and sentinel.discover_master(SERVICE) == new.address
        assert errors, "a write went through while the primary was dead and not yet replaced"
        assert all(error.startswith(("ConnectionError", "TimeoutError", "MasterNotFoundError")) for error in errors)
        assert {key.decode() for key in client.keys("*")} == {"acknowledged", "after"}
        sentinel_setup.bring_back(old)
        assert old.role() == "slave"
        sentinel_setup.wait_in_sync(new, [old])
        assert keys(old.client()) == {"acknowledged", "after"}
    finally:
        client.close()
        sentinel.close()


def test_a_replica_whose_link_was_paused_is_promoted_without_the_last_writes(sentinel_setup: SentinelSetup) -> None:
    primary = sentinel_setup.primary
    (replica,) = sentinel_setup.replicas
    writer = primary.client()
    try:
        assert set_and_wait(writer, "replicated") == 1
        sentinel_setup.pause_replication(replica)
        assert set_and_wait(writer, "lost", timeout_ms=200) == 0  # the write the replica will never get
    finally:
        writer.close()
    old = sentinel_setup.kill_primary()
    new = sentinel_setup.wait_for_failover(old.address)
    assert new is replica
    assert keys(new.client()) == {"replicated"}
    sentinel_setup.resume_replication(new)
    sentinel_setup.bring_back(old)  # comes back with nothing (no persistence), resyncs from the new primary
    sentinel_setup.wait_in_sync(new, [old])
    assert keys(old.client()) == {"replicated"}


def test_a_demoted_primary_refuses_writes_as_a_read_only_replica(sentinel_setup: SentinelSetup) -> None:
    old = sentinel_setup.kill_primary()
    new = sentinel_setup.wait_for_failover(old.address)
    sentinel_setup.bring_back(old)
    stale = old.client()  # a client that still names the old primary's address
    try:
        assert stale.ping()
        with pytest.raises(redis.ReadOnlyError, match="You can't write against a read only replica"):
            stale.set("refused", "1")
    finally:
        stale.close()
    sentinel = sentinel_client(sentinel_setup)
    client = sentinel.master_for(SERVICE)
    try:
        client.set("accepted", "1")
        assert sentinel.discover_master(SERVICE) == new.address
    finally:
        client.close()
        sentinel.close()


def test_sentinels_with_a_password_of_their_own_want_it_in_sentinel_kwargs(redis_family: ServerFamily) -> None:
    with SentinelSetup(redis_family, sentinel_password="sentinel-secret") as setup:
        bounded = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}
        for wrong in (bounded, {**bounded, "password": "not-it"}):
            refused = Sentinel(setup.sentinel_addresses, sentinel_kwargs=wrong, **bounded)
            with pytest.raises(MasterNotFoundError):
                refused.discover_master(SERVICE)
            refused.close()
        with_password = {**bounded, "password": "sentinel-secret"}
        allowed = Sentinel(setup.sentinel_addresses, sentinel_kwargs=with_password, **bounded)
        client = allowed.master_for(SERVICE)  # the data nodes want no password
        try:
            assert allowed.discover_master(SERVICE) == setup.primary_address()
            assert client.set("written", "1")
        finally:
            client.close()
            allowed.close()


# -- Cluster ------------------------------------------------------------------------------------


def cluster_client(cluster: ClusterSetup, *seeds: tuple[str, int]) -> RedisCluster:
    nodes = [ClusterNode(host, port) for host, port in (seeds or cluster.seeds)]
    return RedisCluster(startup_nodes=nodes, socket_timeout=1.0, socket_connect_timeout=1.0)


def test_a_cluster_covers_every_slot_and_a_plain_client_of_another_node_gets_moved(
    redis_family: ServerFamily,
) -> None:
    with ClusterSetup(redis_family) as cluster:
        slot = cluster.slot_of(MAP_KEY)
        assert slot == 15036
        owner = cluster.owner_of(slot)
        other = next(node for node in cluster.masters if node is not owner)
        client = cluster_client(cluster, other.address)  # seeded with a node that does not own the slot
        plain = other.client()
        try:
            client.set(MAP_KEY, "1")
            assert owner.call("GET", MAP_KEY) == "1"
            with pytest.raises(redis.ResponseError) as refused:
                plain.get(MAP_KEY)
            assert str(refused.value) == f"{slot} {owner.name}"  # redis-py drops the word MOVED
            assert type(refused.value).__name__ in {"MovedError", "ResponseError"}
        finally:
            plain.close()
            client.close()


def test_a_registered_script_runs_on_the_owner_of_its_keys_and_survives_a_script_flush(
    redis_family: ServerFamily,
) -> None:
    with ClusterSetup(redis_family) as cluster:
        client = cluster_client(cluster)
        try:
            script = client.register_script("redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]")
            assert script(keys=[MAP_KEY], args=["first"]) == b"first"
            owner = cluster.owner_of(cluster.slot_of(MAP_KEY))
            assert owner.call("GET", MAP_KEY) == "first"
            owner.call("SCRIPT", "FLUSH")
            assert script(keys=[MAP_KEY], args=["again"]) == b"again"  # NOSCRIPT, SCRIPT LOAD, EVALSHA
            assert owner.call("SCRIPT", "EXISTS", script.sha) == [1]
        finally:
            client.close()


def test_a_resharded_slot_moves_with_its_keys_and_the_cluster_client_follows(redis_family: ServerFamily) -> None:
    with ClusterSetup(redis_family) as cluster:
        slot = cluster.slot_of(MAP_KEY)
        client = cluster_client(cluster)
        try:
            names = [f"{{mini-ipam}}:k{number}" for number in range(50)]
            for name in names:
                client.set(name, name)
            target = next(node for node in cluster.masters if node is not cluster.owner_of(slot))
            old = cluster.reshard(slot, target)
            assert cluster.owner_of(slot) is target
            assert old.call("DBSIZE") == 0 and target.call("CLUSTER", "COUNTKEYSINSLOT", slot) == 50
            assert [client.get(name) for name in names] == [name.encode() for name in names]  # MOVED followed
            with pytest.raises(redis.ResponseError, match=f"^{slot} {target.name}$"):
                old.client().get(names[0])
        finally:
            client.close()


def test_while_a_slot_migrates_its_old_owner_answers_ask_and_the_cluster_client_follows(
    redis_family: ServerFamily,
) -> None:
    with ClusterSetup(redis_family) as cluster:
        slot = cluster.slot_of(MAP_KEY)
        client = cluster_client(cluster)
        try:
            client.set("{mini-ipam}:moved", "early")
            client.set("{mini-ipam}:stays", "put")
            target = next(node for node in cluster.masters if node is not cluster.owner_of(slot))
            source = cluster.begin_migration(slot, target)
            assert cluster.move_keys(slot, source, target, ["{mini-ipam}:moved"]) == 1
            plain = source.client()
            try:
                assert plain.get("{mini-ipam}:stays") == b"put"  # still held by the source: served there
                with pytest.raises(redis.ResponseError, match=f"^{slot} {target.name}$"):  # ASK, word dropped
                    plain.get("{mini-ipam}:moved")
            finally:
                plain.close()
            assert client.get("{mini-ipam}:moved") == b"early"  # ASKING on the target, then the GET
            client.set("{mini-ipam}:new", "made during the move")  # absent on the source: made on the target
            assert target.call("DBSIZE") == 2 and source.call("DBSIZE") == 1
            cluster.move_keys(slot, source, target)
            cluster.finish_migration(slot, source, target)
            assert cluster.owner_of(slot) is target and target.call("DBSIZE") == 3
            assert client.get("{mini-ipam}:stays") == b"put"
        finally:
            client.close()


def test_a_killed_slot_owner_fails_over_to_its_replica_and_the_cluster_client_follows(
    redis_family: ServerFamily,
) -> None:
    with ClusterSetup(redis_family, replicas=1) as cluster:
        slot = cluster.slot_of(MAP_KEY)
        client = cluster_client(cluster)
        try:
            owner = cluster.owner_of(slot)
            (replica,) = cluster.replicas_of(owner)
            assert set_and_wait(owner.client(), MAP_KEY) == 1
            old, new = cluster.kill_owner(slot)
            assert (old, new) == (owner, replica)
            errors = write_until_it_works(client, "{mini-ipam}:after")
            cluster.wait_for_owner(slot, new)
            assert errors, "a write went through while the slot's owner was dead and not yet replaced"
            assert client.get(MAP_KEY) == b"1"
            assert new.call("GET", "{mini-ipam}:after") == "1"
            cluster.bring_back(old)
            assert old.role() == "slave"
            assert cluster.replicas_of(new) == [old]
        finally:
            client.close()


def test_a_cluster_failover_on_the_replica_hands_the_slot_over_without_losing_a_write(
    redis_family: ServerFamily,
) -> None:
    with ClusterSetup(redis_family, replicas=1) as cluster:
        slot = cluster.slot_of(MAP_KEY)
        client = cluster_client(cluster)
        try:
            for number in range(100):
                client.set(f"{{mini-ipam}}:k{number}", number)
            old, new = cluster.fail_over(slot, kill=False)
            assert cluster.owner_of(slot) is new and old.role() == "slave"
            assert new.call("DBSIZE") == 100
            assert client.get("{mini-ipam}:k99") == b"99"
        finally:
            client.close()
