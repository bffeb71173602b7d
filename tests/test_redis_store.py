"""Redis-specific behaviour of RedisStore: URLs, key layout, round trips, failures.

The shared contract lives in test_store_contract.py; this module covers what
only a Redis store has. Tests marked ``redis`` run against real redis-server
processes on temporary Unix sockets; the rest use fakeredis.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import stores
from stores import (
    AnySubnet,
    ClosedPool,
    ConfigurationError,
    CorruptState,
    ExactSubnet,
    Granted,
    MapLost,
    NoFreeSubnet,
    Overlap,
    StoreUnavailable,
)
from stores.memory import MemoryStore
from stores.redis import RedisStore
from tests.helpers import addresses_of
from tests.servers import BUSY_LOOP, RedisServer, wait_until

net = ipaddress.ip_network
ip = ipaddress.ip_address


def fake_store(server: fakeredis.FakeServer | None = None, prefix: str = "test") -> RedisStore:
    """A RedisStore on a fakeredis server (a new one unless given)."""
    return RedisStore(fakeredis.FakeRedis(server=server or fakeredis.FakeServer()), prefix=prefix)


def open_exact(
    store: stores.Store, cidr: str, scope: str = "s", label: str = "local"
) -> Granted | Overlap | NoFreeSubnet:
    return store.open_pool(ExactSubnet(net(cidr)), scope=scope, label=label, owner="host-a")


def open_any(store: stores.Store, parent: str, size: int, scope: str = "s") -> Granted | Overlap | NoFreeSubnet:
    return store.open_pool(AnySubnet((net(parent),), size), scope=scope, label="local", owner="host-a")


def granted(result: object) -> Granted:
    assert isinstance(result, Granted), result
    return result


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def loads(value: bytes | str | None) -> Any:
    assert value is not None
    return json.loads(value)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may pause, kill and restart."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # a stopped process would ignore SIGTERM
        server.stop()


# -- URLs --------------------------------------------------------------------


def kwargs_of(store: RedisStore) -> dict[str, Any]:
    return dict(store.client.connection_pool.connection_kwargs)


def test_redis_url_with_credentials_db_and_prefix() -> None:
    store = RedisStore.from_url("redis://alice:pw@cache.example:6380/2?prefix=blue", timeout=2.5)
    kwargs = kwargs_of(store)
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.example", 6380, 2)
    assert (kwargs["username"], kwargs["password"]) == ("alice", "pw")
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 2.5
    assert kwargs["retry"].get_retries() == 0  # no retry may stretch a call beyond the timeout
    assert store.client.connection_pool.connection_class is redis.Connection
    assert store.prefix == "blue"
    assert "prefix" not in kwargs


def test_default_prefix_and_db() -> None:
    store = RedisStore.from_url("redis://localhost")
    assert store.prefix == "mini-ipam"
    assert kwargs_of(store).get("db", 0) == 0
    assert kwargs_of(store)["socket_timeout"] == 5.0


def test_rediss_url_passes_tls_options_on() -> None:
    url = (
        "rediss://redis.example:6380/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key&ssl_check_hostname=false&prefix=tls"
    )
    store = RedisStore.from_url(url)
    kwargs = kwargs_of(store)
    assert store.client.connection_pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_certfile"] == "/etc/client.pem"
    assert kwargs["ssl_keyfile"] == "/etc/client.key"
    assert kwargs["ssl_check_hostname"] is False
    assert store.prefix == "tls"
    connection = store.client.connection_pool.make_connection()
    assert connection.cert_reqs == ssl.CERT_REQUIRED  # type: ignore[attr-defined]


def test_unix_url_with_db_and_prefix() -> None:
    store = stores.from_url("unix:///run/redis/redis.sock?db=3&prefix=green", timeout=1.0)
    assert isinstance(store, RedisStore)
    kwargs = kwargs_of(store)
    assert (kwargs["path"], kwargs["db"]) == ("/run/redis/redis.sock", 3)
    assert store.client.connection_pool.connection_class is redis.UnixDomainSocketConnection
    assert store.prefix == "green"
    assert repr(store) == "RedisStore('unix:///run/redis/redis.sock?db=3', prefix='green')"


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost/0?bogus=1",
        "redis://localhost/0?socket_timeout=60",  # the timeout argument rules
        "redis://localhost/0?ssl_cert_reqs=none",  # TLS options need rediss://
        "unix:///run/redis.sock?ssl_ca_certs=/ca.pem",
        "unix:///run/redis.sock?password=secret",  # a password goes in the user part, where it is redacted
        "rediss://localhost/0?ssl_cert_reqs=sometimes",
        "rediss://localhost/0?ssl_check_hostname=perhaps",
        "rediss://localhost/0?ssl_ca_certs=",
        "redis://localhost/zero",
        "redis://localhost/1?db=2",
        "redis://localhost/0?db=one",
        "redis://localhost/0?db=1&db=2",
        "redis://localhost:port/0",
        "redis://localhost/0#fragment",
        "unix://relative/redis.sock",
        "redis://localhost/0?prefix=",
        "redis://localhost/0?prefix=a{b}",
        "redis://localhost/0?prefix=a*",
    ],
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        stores.from_url(url)


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        RedisStore.from_url("redis://localhost/0", timeout=0)


def test_configuration_errors_redact_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_url("redis://admin:s3cret-pw@localhost/0?bogus=1")
    assert "s3cret-pw" not in str(info.value)
    assert "admin:***@localhost" in str(info.value)


def test_constructor_does_no_io() -> None:
    # Nothing listens there; a booting Docker engine must not wait for us.
    started = time.monotonic()
    store = RedisStore.from_url("unix:///nonexistent/redis.sock", timeout=5.0)
    RedisStore(redis.Redis(host="192.0.2.1", socket_connect_timeout=30))  # TEST-NET-1: never answers
    assert time.monotonic() - started < 0.5
    with pytest.raises(StoreUnavailable, match=r"could not reach redis at unix:///nonexistent/redis.sock"):
        store.make_setting("a", "b")


def test_password_never_appears_in_errors_reprs_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store = RedisStore.from_url("redis://admin:s3cret-pw@127.0.0.1:1/0", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.open_pool(ExactSubnet(net("10.0.0.0/24")), scope="s", label="local", owner="host-a")
    assert time.monotonic() - started < 2.0
    assert "redis://admin:***@127.0.0.1:1/0" in str(info.value)
    seen = [str(info.value), repr(info.value), repr(store), caplog.text]
    cause: BaseException | None = info.value
    while cause is not None:
        seen += [str(cause), repr(cause)]
        cause = cause.__cause__ or cause.__context__
    assert not [item for item in seen if "s3cret-pw" in item]


def test_prefixes_must_be_plain_names() -> None:
    with pytest.raises(ConfigurationError):
        RedisStore(fakeredis.FakeRedis(), prefix="a:{b}")


# -- key layout --------------------------------------------------------------


@pytest.mark.store_kinds("fakeredis", "redis")
def test_claims_are_readable_with_redis_cli(store_factory: Callable[[], stores.Store]) -> None:
    store = store_factory()
    assert isinstance(store, RedisStore)
    client, keys = store.client, f"{{{store.prefix}}}:"
    before = time.time()
    pool = granted(open_exact(store, "10.1.2.0/28", label="local")).pool
    v6 = granted(store.open_pool(AnySubnet((net("fd00:0:0:2::/63"),), 64), scope="g", label="global", owner="b"))
    assert v6.pool.subnet == net("fd00:0:0:2::/64")

    slot = loads(client.get(f"{keys}slot:10.1.2.0/28"))
    assert slot == {"owner": "host-a", "label": "local", "since": pool.since}
    assert before <= slot["since"] <= time.time()
    assert loads(client.get(f"{keys}slot:fd00:0:0:2::/64"))["label"] == "global"

    store.claim_address(pool.subnet, "s", ip("10.1.2.5"))
    store.claim_next_address(pool.subnet, "s", ip("10.1.2.1"), ip("10.1.2.14"), True)
    addrs = {text(k): json.loads(v) for k, v in client.hgetall(f"{keys}addrs:10.1.2.0/28:s").items()}
    assert set(addrs) == {"10.1.2.5", "10.1.2.1"} and all("since" in value for value in addrs.values())
    info = loads(client.hget(f"{keys}pools:10.1.2.0/28", "s"))
    assert info == {"owner": "host-a", "since": pool.since, "cursor": "10.1.2.1"}

    names = sorted(text(key) for key in client.scan_iter(match=f"{keys}*") if b":req:" not in key)
    assert names == sorted(
        f"{keys}{name}"
        for name in [
            "map",
            "tree:4",
            "tree:6",
            "slot:10.1.2.0/28",
            "slot:fd00:0:0:2::/64",
            "pools:10.1.2.0/28",
            "pools:fd00:0:0:2::/64",
            "addrs:10.1.2.0/28:s",
            "atree:10.1.2.0/28:s",
        ]
    )
    # Each claim left how to undo it in case its reply had been lost; the next call said that reply
    # arrived, so only the last claim's record (the serial address) is left, expiring within the hour.
    requests = [key for key in client.scan_iter(match=f"{keys}req:*")]
    undo = sorted((record["undo"], record["scope"]) for record in (loads(client.get(key)) for key in requests))
    assert undo == [("release", "s")]
    assert all(0 < client.ttl(key) <= 3600 for key in requests)
    # Closing the last pools leaves nothing behind but the map's identity (releases record no undo,
    # and the first of them confirmed the last claim).
    store.close_pool(pool.subnet, "s")
    store.close_pool(v6.pool.subnet, "g")
    assert sorted(text(key) for key in client.scan_iter(match=f"{keys}*")) == [f"{keys}map"]


@pytest.mark.redis
def test_two_prefixes_on_one_redis_are_independent(redis_server: RedisServer) -> None:
    blue = RedisStore.from_url(f"{redis_server.url}?prefix=blue-{os.getpid()}")
    green = RedisStore.from_url(f"{redis_server.url}?prefix=green-{os.getpid()}")
    try:
        assert granted(open_exact(blue, "10.0.0.0/24")).created
        assert granted(open_exact(green, "10.0.0.0/24")).created
        assert blue.make_setting("pool6", "fd01::/48") == "fd01::/48"
        assert green.make_setting("pool6", "fd02::/48") == "fd02::/48"
        assert blue.claim_address(net("10.0.0.0/24"), "s", ip("10.0.0.9"))
        assert addresses_of(green, net("10.0.0.0/24"), "s") == []
        closed = blue.close_pool(net("10.0.0.0/24"), "s")
        assert closed is not None and closed.freed
        assert blue.blocks() == [] and [b.subnet for b in green.blocks()] == [net("10.0.0.0/24")]
    finally:
        for store in (blue, green):
            for pool in store.pools():
                store.close_pool(pool.subnet, pool.scope)
            store.close()


def test_clients_that_decode_responses_work_too() -> None:
    store = RedisStore(fakeredis.FakeRedis(decode_responses=True), prefix="text")
    subnet = granted(open_any(store, "fd00::/48", 64)).pool.subnet
    assert store.claim_next_address(subnet, "s", ip("fd00::1"), ip("fd00::ff"), True) == ip("fd00::1")
    assert [p.subnet for p in store.pools()] == [subnet] and [b.subnet for b in store.blocks()] == [subnet]
    assert store.make_setting("a", "b") == "b"
    assert addresses_of(store, subnet, "s") == [ip("fd00::1")]


def test_listing_skips_nothing_and_reads_every_pool() -> None:
    store = fake_store()
    for i in range(50):
        granted(open_any(store, "10.0.0.0/16", 28, scope=f"s{i % 3}"))
    open_exact(store, "10.0.0.0/28", scope="x", label="local")  # overlaps: refused
    assert len(store.blocks()) == 50
    pools = store.pools()
    assert len(pools) == 50 and {p.scope for p in pools} == {"s0", "s1", "s2"}


# -- failures never leave half-claimed state -----------------------------------


def test_a_slot_key_without_a_tree_record_is_corrupt_state_and_changes_nothing() -> None:
    store = fake_store()
    store.client.set("{test}:slot:10.0.0.0/28", '{"owner":"x","label":"local","since":1}')
    with pytest.raises(CorruptState, match="10.0.0.0/28"):
        open_exact(store, "10.0.0.0/28")
    assert store.client.hgetall("{test}:tree:4") == {}
    assert store.client.exists("{test}:pools:10.0.0.0/28") == 0


def test_an_unreadable_pool_refuses_a_serial_claim_and_changes_nothing() -> None:
    store = fake_store()
    subnet = granted(open_exact(store, "10.0.0.0/28")).pool.subnet
    store.client.hset("{test}:pools:10.0.0.0/28", "s", '{"owner":"x","since":1}')  # no cursor member
    with pytest.raises(CorruptState):
        store.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.14"), True)
    assert addresses_of(store, subnet, "s") == []
    assert store.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.14"), False) == ip("10.0.0.1")


def test_addresses_outside_the_pool_are_refused() -> None:
    store = fake_store()
    subnet = granted(open_exact(store, "10.0.0.0/28")).pool.subnet
    with pytest.raises(ValueError):
        store.claim_address(subnet, "s", ip("10.0.0.16"))
    with pytest.raises(ValueError):
        store.release_address(subnet, "s", ip("fd00::1"))


def test_a_range_reaching_beyond_the_pool_is_cut_to_it() -> None:
    ranges = [
        ("10.0.0.0", "10.0.0.5"),
        ("10.0.0.6", "10.0.0.255"),
        ("10.0.0.0", "10.0.0.255"),
        ("10.0.0.8", "10.0.0.255"),
        ("10.0.0.6", "10.0.0.5"),
        ("10.0.0.0", "10.0.0.3"),
        ("10.0.0.0", "10.0.0.9"),
    ]
    results = []
    for store in (MemoryStore(), fake_store()):
        subnet = granted(open_exact(store, "10.0.0.4/30")).pool.subnet
        results.append([store.claim_next_address(subnet, "s", ip(a), ip(b), True) for a, b in ranges])
    assert results[0] == results[1]
    assert results[1] == [ip("10.0.0.4"), ip("10.0.0.6"), ip("10.0.0.7"), None, None, None, ip("10.0.0.5")]


def test_single_address_pools_work() -> None:
    store = fake_store()
    subnet = granted(open_exact(store, "fd00::7/128")).pool.subnet
    assert store.claim_next_address(subnet, "s", ip("fd00::7"), ip("fd00::7"), True) == ip("fd00::7")
    assert store.claim_next_address(subnet, "s", ip("fd00::7"), ip("fd00::7"), True) is None
    assert store.release_address(subnet, "s", ip("fd00::7"))
    assert addresses_of(store, subnet, "s") == []


def test_a_call_reaching_the_server_after_its_deadline_changes_nothing() -> None:
    store = RedisStore(fakeredis.FakeRedis(), prefix="late", timeout=1.0)
    assert store.make_setting("a", "b") == "b"  # the reply tells the store the server's clock
    clock = store._clock
    assert clock is not None
    # Pretend the server's clock runs a minute ahead: every deadline has passed.
    store._clock = type(clock)(offset=clock.offset - 60_000_000, error=clock.error)
    with pytest.raises(StoreUnavailable, match="too late"):
        open_exact(store, "10.0.0.0/24")
    assert store.blocks() == []
    # The refusal carried the server's time, so the next call is on time again.
    assert granted(open_exact(store, "10.0.0.0/24")).created


def test_calls_carry_no_deadline_without_a_timeout() -> None:
    store = RedisStore(fakeredis.FakeRedis(socket_timeout=None))
    store.make_setting("a", "b")
    assert store._deadline(time.monotonic()) == 0


# -- round trips ---------------------------------------------------------------


@contextlib.contextmanager
def sent_commands() -> Iterator[list[str]]:
    """Every command any redis-py connection of this process sends, by name."""
    sent: list[str] = []
    original = redis.connection.AbstractConnection.send_command

    def counting(self: redis.connection.AbstractConnection, *args: Any, **kwargs: Any) -> None:
        sent.append(str(args[0]).upper())
        original(self, *args, **kwargs)

    redis.connection.AbstractConnection.send_command = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        redis.connection.AbstractConnection.send_command = original  # type: ignore[method-assign]


def measure(server: redis.Redis, action: Callable[[], object]) -> tuple[list[str], int, int]:
    """Commands the store sent, EVALSHA calls the server ran, and commands run inside the script."""
    server.config_resetstat()
    with sent_commands() as sent:
        action()
    stats = server.info("commandstats")
    evalsha = stats.get("cmdstat_evalsha", {}).get("calls", 0)
    own = {"cmdstat_evalsha", "cmdstat_info", "cmdstat_config|resetstat", "cmdstat_config"}
    inner = sum(value["calls"] for name, value in stats.items() if name not in own)
    return sent, evalsha, inner


def round_trips(store: RedisStore, server: redis.Redis, parent: str) -> dict[str, tuple[int, int, int]]:
    """Measure each hot-path operation once; (sent, evalsha, in-script) per operation."""
    got = granted(store.open_pool(AnySubnet((net(parent),), 28), scope="s", label="local", owner="h"))
    subnet = got.pool.subnet
    first, last = subnet.network_address + 1, subnet.broadcast_address - 1
    exact = ipaddress.ip_network((int(net(parent).broadcast_address) - 15, 28))  # the parent's last /28
    actions: dict[str, Callable[[], object]] = {
        "open_pool(any)": lambda: store.open_pool(AnySubnet((net(parent),), 28), scope="t", label="l", owner="h"),
        "open_pool(exact)": lambda: store.open_pool(ExactSubnet(exact), scope="s", label="l", owner="h"),
        "claim_next_address": lambda: store.claim_next_address(subnet, "s", first, last, True),
        "claim_address": lambda: store.claim_address(subnet, "s", first + 5),
        "release_address": lambda: store.release_address(subnet, "s", first + 5),
        "pool": lambda: store.pool(subnet, "s"),
        "close_pool": lambda: store.close_pool(subnet, "s"),
    }
    results = {}
    for name, action in actions.items():
        sent, evalsha, inner = measure(server, action)
        results[name] = (len(sent), evalsha, inner)
    return results


@pytest.mark.redis
def test_every_operation_is_one_round_trip_at_any_fill(redis_server: RedisServer) -> None:
    server = redis_server.client()
    store = RedisStore.from_url(f"{redis_server.url}?prefix=trips-{os.getpid()}")
    try:
        store.make_setting("warm", "up")  # connect and load the script first
        empty = round_trips(store, server, "10.0.0.0/16")
        for _ in range(2000):  # fill 2,000 of the 4,096 /28s of a /16
            granted(store.open_pool(AnySubnet((net("10.1.0.0/16"),), 28), scope="s", label="l", owner="h"))
        assert len(store.blocks()) >= 2000
        full = round_trips(store, server, "10.1.0.0/16")
        print("\noperation            empty map (sent, evalsha, in-script)   2,000 blocks")
        for name in empty:
            print(f"{name:20} {empty[name]!s:38} {full[name]}")
        for name in empty:
            assert empty[name][:2] == (1, 1), name
            assert full[name][:2] == (1, 1), name
            # In-script work depends on prefix lengths, not on the 2,000 claims.
            assert full[name][2] <= 2 * 32 + 10, (name, full[name])
    finally:
        for pool in store.pools():
            store.close_pool(pool.subnet, pool.scope)
        store.close()


@pytest.mark.redis
def test_a_flushed_script_costs_three_commands_once(redis_server: RedisServer) -> None:
    server = redis_server.client()
    store = RedisStore.from_url(f"{redis_server.url}?prefix=flush-{os.getpid()}")
    try:
        store.make_setting("warm", "up")
        server.script_flush()
        with sent_commands() as sent:
            store.make_setting("a", "b")
        assert sent == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"]
        with sent_commands() as sent:
            store.make_setting("a", "c")
        assert sent == ["EVALSHA"]
    finally:
        store.close()


@pytest.mark.redis
def test_close_releases_the_connections(redis_server: RedisServer) -> None:
    server = redis_server.client()
    store = RedisStore.from_url(f"{redis_server.url}?prefix=close-{os.getpid()}")
    store.make_setting("a", "b")
    server.ping()
    before = len(server.client_list())
    store.close()
    wait_until(lambda: len(server.client_list()) == before - 1, what="the store's connection to close")


# -- an unreachable, paused or restarted server --------------------------------


@pytest.mark.redis
def test_a_paused_server_times_out_and_the_same_store_recovers(own_server: RedisServer) -> None:
    assert own_server.process is not None
    store = RedisStore.from_url(own_server.url, timeout=1.0)
    subnet = granted(open_exact(store, "10.0.0.0/24")).pool.subnet
    os.kill(own_server.process.pid, signal.SIGSTOP)
    try:
        for call in (lambda: store.claim_address(subnet, "s", ip("10.0.0.1")), lambda: store.blocks()):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=r"did not answer within 1.0s") as info:
                call()
            assert time.monotonic() - started < 2.0
            assert f"unix://{own_server.socket}" in str(info.value)
            assert isinstance(info.value.__cause__, redis.TimeoutError)
    finally:
        os.kill(own_server.process.pid, signal.SIGCONT)
    # The same store works again without being rebuilt. The claim that timed out
    # had been sent, and the resumed server did run the script, but after its
    # deadline, so it changed nothing: a timeout means "nothing changed".
    assert [b.subnet for b in store.blocks()] == [subnet]
    assert addresses_of(store, subnet, "s") == []
    assert store.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.254"), False) == ip("10.0.0.1")
    store.close()


@pytest.mark.redis
def test_a_killed_server_fails_fast_and_a_restarted_empty_one_is_a_lost_map(own_server: RedisServer) -> None:
    assert own_server.process is not None
    store = RedisStore.from_url(own_server.url, timeout=1.0)
    assert store.make_setting("a", "b") == "b"
    assert granted(open_exact(store, "10.0.0.0/24")).created
    own_server.process.kill()
    own_server.process.wait()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="could not reach redis"):
        store.make_setting("a", "b")
    assert time.monotonic() - started < 0.5
    own_server.start()  # same socket; it keeps no data, so the script is loaded afresh
    # The first connection finds another server (a new run id) and is refused, so that nothing
    # runs before the store has settled; the call after it finds the map gone.
    with pytest.raises(StoreUnavailable, match="server behind this address changed"):
        open_exact(store, "10.0.0.0/24")
    with pytest.raises(MapLost, match="no identity any more") as lost:
        open_exact(store, "10.0.0.0/24")  # it would have been handed out again
    assert lost.value.why == "absent"
    # The refusal wrote nothing (the failed call's "abandoned" marker is all there is).
    assert [key for key in store.client.keys("*") if b":req:" not in key] == []
    status, made = store.recover(store.identity)  # a member rebuilding it: a new map, another id
    assert made and status.identity is not None and status.identity.id != store.identity.id
    store.adopt(status.identity)
    assert granted(open_exact(store, "10.0.0.0/24")).created
    store.close()


# -- a call that ran but whose reply was delayed or lost -------------------------


def stalled_right_after(server: RedisServer, action: Callable[[], object]) -> BaseException | None:
    """Run ``action`` (a call of a store with a 1 s timeout) while Redis runs it in time, then stalls.

    A 0.3 s busy script holds Redis when the call arrives; a 2 s one is queued
    right behind it. Redis runs the call well within its deadline, then the 2 s
    script, before it writes the call's reply: the store gives up after 1 s.
    Returns what ``action`` raised, once Redis is free again.
    """
    holder, sleeper = server.client(), server.client()
    holder.ping()
    sleeper.ping()  # both connected: their commands reach Redis the moment they are sent
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised[0] = exc

    hold = threading.Thread(target=holder.eval, args=(BUSY_LOOP, 0, 300_000))
    hold.start()
    time.sleep(0.05)
    asking = threading.Thread(target=run)
    asking.start()
    time.sleep(0.1)
    try:
        sleeper.eval(BUSY_LOOP, 0, 2_000_000)
    finally:
        hold.join()
        asking.join()
        holder.close()
        sleeper.close()
    return raised[0]


@pytest.mark.redis
def test_a_pool_opened_in_time_whose_reply_stalled_is_undone_before_the_next_call(own_server: RedisServer) -> None:
    store = RedisStore.from_url(own_server.url, timeout=1.0)
    raw = own_server.client()
    try:
        store.make_setting("warm", "up")  # connected, and the server's clock is known: the call has a deadline
        raised = stalled_right_after(own_server, lambda: open_exact(store, "10.0.7.0/24"))
        assert isinstance(raised, StoreUnavailable), raised
        assert raw.exists("{mini-ipam}:slot:10.0.7.0/24") == 1  # it did land: the case this is about
        assert store.blocks() == []  # abandoned (and so undone) before the listing ran
        assert raw.get("{mini-ipam}:slot:10.0.7.0/24") is None and raw.hgetall("{mini-ipam}:tree:4") == {}
        assert [text(raw.get(key)) for key in raw.scan_iter(match="{mini-ipam}:req:*")] == ["abandoned"]
        assert granted(open_exact(store, "10.0.7.0/24")).created
    finally:
        raw.close()
        store.close()


@pytest.mark.redis
@pytest.mark.parametrize("how", ["claim_address", "claim_next_address"])
def test_an_address_claimed_in_time_whose_reply_stalled_is_undone_before_the_next_call(
    own_server: RedisServer, how: str
) -> None:
    store = RedisStore.from_url(own_server.url, timeout=1.0)
    subnet = granted(open_exact(store, "10.0.0.0/24")).pool.subnet
    first, last = ip("10.0.0.1"), ip("10.0.0.254")
    claims: dict[str, Callable[[], object]] = {
        "claim_address": lambda: store.claim_address(subnet, "s", first),
        "claim_next_address": lambda: store.claim_next_address(subnet, "s", first, last, True),
    }
    raw = own_server.client()
    try:
        raised = stalled_right_after(own_server, claims[how])
        assert isinstance(raised, StoreUnavailable), raised
        assert raw.hkeys("{mini-ipam}:addrs:10.0.0.0/24:s") == [b"10.0.0.1"]  # it did land
        assert addresses_of(store, subnet, "s") == []  # abandoned (and so undone) first
        assert b"c" not in raw.hvals("{mini-ipam}:atree:10.0.0.0/24:s")  # the serial cursor may stay
        assert store.claim_address(subnet, "s", first)
        assert [b.subnet for b in store.blocks()] == [subnet]
    finally:
        raw.close()
        store.close()


def losing_replies(store: RedisStore) -> Callable[[], None]:
    """Make the store's script calls run but lose their replies; returns a function that undoes it."""
    script = store._script

    def lost(*args: Any, **kwargs: Any) -> Any:
        script(*args, **kwargs)
        raise redis.TimeoutError("the reply was lost")

    store._script = lost  # type: ignore[assignment]
    return lambda: setattr(store, "_script", script)


def test_a_lost_reply_is_undone_before_any_later_call_and_waits_while_redis_is_away() -> None:
    store = fake_store()
    subnet = granted(open_exact(store, "10.0.0.0/24")).pool.subnet

    def held() -> tuple[int, int]:
        return len(store.client.keys("{test}:slot:*")), len(store.client.hkeys("{test}:addrs:10.0.0.0/24:s"))

    def away(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection refused")

    for action, landed in (
        (lambda: open_exact(store, "10.0.1.0/24"), (2, 0)),
        (lambda: open_any(store, "10.0.0.0/16", 24), (2, 0)),
        (lambda: store.claim_address(subnet, "s", ip("10.0.0.9")), (1, 1)),
        (lambda: store.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.254"), True), (1, 1)),
    ):
        restore = losing_replies(store)
        with pytest.raises(StoreUnavailable):
            action()
        restore()
        assert held() == landed and len(store._pending) == 1
        # While Redis is still away, a call fails without being sent, and the abandon stays pending.
        store._script = away  # type: ignore[assignment]
        with pytest.raises(StoreUnavailable, match="could not reach"):
            store.pool(subnet, "s")
        assert len(store._pending) == 1
        restore()
        assert store.pool(subnet, "s") is not None  # the abandon, then the call itself
        assert store._pending == [] and held() == (1, 0)
    assert store.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.254"), False) == ip("10.0.0.1")


def test_an_abandon_whose_own_reply_is_lost_stays_pending_and_is_repeated() -> None:
    store = fake_store()
    restore = losing_replies(store)
    with pytest.raises(StoreUnavailable):
        open_exact(store, "10.0.1.0/24")
    with pytest.raises(StoreUnavailable):
        store.blocks()  # the abandon ran (and undid the pool) but its reply was lost too
    restore()
    assert store.client.keys("{test}:slot:*") == [] and len(store._pending) == 1
    assert store.blocks() == [] and store._pending == []  # repeated harmlessly


def test_calls_waiting_for_a_failing_abandon_fail_at_once_without_trying_again() -> None:
    store = RedisStore(fakeredis.FakeRedis(), prefix="test", timeout=1.0)
    restore = losing_replies(store)
    with pytest.raises(StoreUnavailable):
        open_exact(store, "10.0.1.0/24")
    sent: list[float] = []

    def slow_timeout(*args: Any, **kwargs: Any) -> Any:
        sent.append(time.monotonic())
        time.sleep(0.5)
        raise redis.TimeoutError("timed out")

    store._script = slow_timeout  # type: ignore[assignment]
    took: list[float] = []

    def call() -> None:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.make_setting("a", "b")
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 1 and max(took) < 0.9  # one abandon was tried; the others waited for it, not after it
    restore()
    assert store.blocks() == [] and store._pending == []


def test_close_abandons_what_is_pending() -> None:
    store = fake_store()
    restore = losing_replies(store)
    with pytest.raises(StoreUnavailable):
        open_exact(store, "10.0.1.0/24")
    restore()
    store.close()
    assert store.client.keys("{test}:slot:*") == [] and store._pending == []


def test_a_request_abandoned_before_it_arrives_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = fake_store()
    subnet = granted(open_exact(store, "10.0.0.0/24")).pool.subnet
    assert store.claim_address(subnet, "s", ip("10.0.0.5"))
    monkeypatch.setattr("stores.redis.store._request_id", lambda: "late")
    assert store._send("abandon", "late", ()) == ["abandoned"]  # the abandon overtakes the request
    for action in (
        lambda: open_exact(store, "10.0.1.0/24"),
        lambda: open_any(store, "10.0.0.0/16", 24),
        lambda: store.claim_address(subnet, "s", ip("10.0.0.9")),
        lambda: store.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.254"), True),
        lambda: store.release_address(subnet, "s", ip("10.0.0.5")),  # a late release must not run either
        lambda: store.close_pool(subnet, "s"),
    ):
        with pytest.raises(StoreUnavailable, match="abandoned"):
            action()
    assert store._pending == []  # the script answered that it did not run them: nothing to abandon
    assert store.client.get("{test}:req:late") == b"abandoned"
    assert [b.subnet for b in store.blocks()] == [subnet] and addresses_of(store, subnet, "s") == [ip("10.0.0.5")]


def test_an_abandon_undoes_only_the_claim_its_request_made(monkeypatch: pytest.MonkeyPatch) -> None:
    store = fake_store()
    ids = iter(["pool", "addr", "x1", "x2", "x3", "x4"])
    monkeypatch.setattr("stores.redis.store._request_id", lambda: next(ids))
    subnet = granted(open_exact(store, "10.0.0.0/24")).pool.subnet  # request "pool"
    assert store.claim_address(subnet, "s", ip("10.0.0.5"))  # request "addr"
    assert store.release_address(subnet, "s", ip("10.0.0.5"))
    assert store.claim_address(subnet, "s", ip("10.0.0.5"), note="someone else's")
    assert store.close_pool(subnet, "s") is not None
    again = granted(open_exact(store, "10.0.0.0/24")).pool  # another claim of the same pool
    assert store._send("abandon", "addr", ()) == ["abandoned"]  # its address went and came back: not its own
    assert store._send("abandon", "pool", ()) == ["abandoned"]  # its pool went and came back: not its own
    assert store.pool(subnet, "s") == again
    assert store._send("abandon", "pool", ()) == ["abandoned"]  # and abandoning is idempotent
    assert store.client.get("{test}:req:pool") == b"abandoned"


def test_an_abandon_of_a_shared_pool_leaves_the_block_to_its_other_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    store = fake_store()
    ids = iter(["first", "joined"])
    monkeypatch.setattr("stores.redis.store._request_id", lambda: next(ids))
    first = store.open_pool(ExactSubnet(net("10.0.0.0/24")), scope="a", label="g", owner="h", share_label="g")
    joined = store.open_pool(ExactSubnet(net("10.0.0.0/24")), scope="b", label="g", owner="h", share_label="g")
    assert granted(first).created and granted(joined).created
    assert store._send("abandon", "joined", ()) == ["undone"]
    assert [(p.subnet, p.scope) for p in store.pools()] == [(net("10.0.0.0/24"), "a")]


# -- canonical text written by Lua ---------------------------------------------

# Zero groups are drawn often, so runs of them (and ties between runs) are common.
groups = st.one_of(st.just(0), st.just(0), st.just(0), st.sampled_from([1, 0xFF, 0xFFFF]), st.integers(0, 0xFFFF))
ipv6_ints = st.lists(groups, min_size=8, max_size=8).map(lambda gs: sum(g << (16 * (7 - i)) for i, g in enumerate(gs)))


@pytest.fixture(scope="module")
def text_stores() -> tuple[RedisStore, RedisStore]:
    """On one fakeredis: a store holding ::/0 and 0.0.0.0/0 pools, and an empty one for blocks."""
    server = fakeredis.FakeServer()
    addresses, blocks = fake_store(server, "addresses"), fake_store(server, "blocks")
    granted(open_exact(addresses, "::/0"))
    granted(open_exact(addresses, "0.0.0.0/0"))
    return addresses, blocks


def python_311_text(address: ipaddress.IPv6Address) -> bool:
    """Whether this Python writes ``address`` as 3.11 does: 3.13 writes IPv4-mapped ones as ::ffff:1.2.3.4."""
    return address.ipv4_mapped is None or sys.version_info < (3, 13)


@settings(max_examples=200, deadline=None)
@given(value=ipv6_ints, plen=st.integers(0, 128))
def test_lua_writes_ipv6_text_like_python(text_stores: tuple[RedisStore, RedisStore], value: int, plen: int) -> None:
    addresses, blocks = text_stores
    address = ipaddress.IPv6Address(value)
    assume(python_311_text(address))
    assert addresses.claim_address(net("::/0"), "s", address)
    try:
        assert addresses.client.hkeys("{addresses}:addrs:::/0:s") == [str(address).encode()]
    finally:
        assert addresses.release_address(net("::/0"), "s", address)
    subnet = ipaddress.IPv6Network((value, plen), strict=False)
    granted(blocks.open_pool(ExactSubnet(subnet), scope="s", label="l", owner="o"))
    try:
        assert blocks.client.exists(f"{{blocks}}:slot:{subnet}") == 1
    finally:
        assert blocks.close_pool(subnet, "s") is not None


def test_lua_writes_ipv4_mapped_addresses_in_hex_on_every_python(text_stores: tuple[RedisStore, RedisStore]) -> None:
    # Key names must not depend on the Python of the host that wrote them.
    addresses, blocks = text_stores
    address = ip("::ffff:1.2.3.4")
    assert addresses.claim_address(net("::/0"), "s", address)
    assert addresses.client.hkeys("{addresses}:addrs:::/0:s") == [b"::ffff:102:304"]
    assert addresses_of(addresses, net("::/0"), "s") == [address]
    assert addresses.release_address(net("::/0"), "s", address)
    granted(blocks.open_pool(ExactSubnet(net("::ffff:1.2.3.0/120")), scope="s", label="l", owner="o"))
    assert [b.subnet for b in blocks.blocks()] == [net("::ffff:102:300/120")]
    assert blocks.client.exists("{blocks}:slot:::ffff:102:300/120") == 1
    assert blocks.close_pool(net("::ffff:1.2.3.0/120"), "s") is not None


@settings(max_examples=100, deadline=None)
@given(value=st.integers(0, 2**32 - 1))
def test_lua_writes_ipv4_text_like_python(text_stores: tuple[RedisStore, RedisStore], value: int) -> None:
    addresses, _ = text_stores
    address = ipaddress.IPv4Address(value)
    assert addresses.claim_address(net("0.0.0.0/0"), "s", address)
    try:
        assert addresses.client.hkeys("{addresses}:addrs:0.0.0.0/0:s") == [str(address).encode()]
    finally:
        assert addresses.release_address(net("0.0.0.0/0"), "s", address)


# -- the Lua tree agrees with MemoryStore step by step ---------------------------

PARENTS = [("10.0.0.0/22",), ("10.0.0.0/24", "10.0.2.0/23"), ("10.0.3.0/24",), ("fd00::/120", "10.0.1.0/24")]
SCOPES = ["a", "b"]
index = st.integers(0, 63)

exact_ops = st.tuples(
    st.just("exact"),
    st.integers(22, 30),
    index,
    st.sampled_from(SCOPES),
    st.sampled_from(["local", "global"]),
    st.sampled_from([None, "global"]),
)
exact6_ops = st.tuples(st.just("exact6"), st.integers(118, 126), index, st.sampled_from(SCOPES))
any_ops = st.tuples(st.just("any"), st.integers(0, len(PARENTS) - 1), st.integers(23, 30), st.sampled_from(SCOPES))
close_ops = st.tuples(st.just("close"), index)
next_ops = st.tuples(st.just("next"), index, st.integers(0, 20), st.integers(0, 40), st.booleans())
claim_ops = st.tuples(st.just("claim"), index, st.integers(0, 20))
release_ops = st.tuples(st.just("release"), index)
operations = st.lists(
    st.one_of(exact_ops, exact6_ops, any_ops, close_ops, next_ops, next_ops, claim_ops, release_ops), max_size=40
)


def normal(result: object) -> object:
    """A result without its timestamps, which differ between the two stores."""
    if isinstance(result, Granted):
        pool = result.pool
        return ("granted", pool.subnet, pool.scope, pool.block.label, pool.block.owner, pool.owner, result.created)
    if isinstance(result, Overlap):
        return ("overlap", result.holder.subnet, result.holder.label, result.holder.owner)
    if isinstance(result, ClosedPool):
        return ("closed", result.pool.subnet, result.pool.scope, result.pool.block.label, result.freed)
    if isinstance(result, NoFreeSubnet):
        return ("exhausted",)
    return result


class Script:
    """Turns generated operations into store calls, naming pools and addresses seen earlier.

    Both stores get the same calls: the pools and addresses are remembered from
    the MemoryStore's results, which the test checks the Redis store matches.
    """

    def __init__(self) -> None:
        self.pools: list[tuple[stores.Network, str]] = []  # every pool ever granted
        self.claimed: list[tuple[stores.Network, str, stores.Address]] = []  # every address ever claimed

    def call(self, store: stores.Store, op: tuple[Any, ...]) -> object:
        kind = op[0]
        if kind in ("exact", "exact6", "any"):
            return self._open(store, op)
        try:
            if kind == "release" and self.claimed:
                subnet, scope, address = self.claimed[op[1] % len(self.claimed)]
                return store.release_address(subnet, scope, address)
            if not self.pools:
                return None
            subnet, scope = self.pools[op[1] % len(self.pools)]
            base = subnet.network_address
            if kind == "close":
                return store.close_pool(subnet, scope)
            if kind == "claim":
                return store.claim_address(subnet, scope, base + op[2] % subnet.num_addresses)
            if kind == "next":
                first, last = base + op[2] % subnet.num_addresses, base + op[3] % subnet.num_addresses
                return store.claim_next_address(subnet, scope, first, last, op[4])
        except LookupError:
            return "unknown pool"
        return None

    def _open(self, store: stores.Store, op: tuple[Any, ...]) -> object:
        kind = op[0]
        if kind == "exact":
            _, plen, i, scope, label, share = op
            subnet = ipaddress.IPv4Network((0x0A000000 + (i << (32 - plen)) % 1024, plen), strict=False)
            return store.open_pool(ExactSubnet(subnet), scope=scope, label=label, owner="o", share_label=share)
        if kind == "exact6":
            _, plen, i, scope = op
            subnet6 = ipaddress.IPv6Network(((0xFD << 120) + (i << (128 - plen)) % 256, plen), strict=False)
            return store.open_pool(ExactSubnet(subnet6), scope=scope, label="local", owner="o")
        _, parents, plen, scope = op
        target = AnySubnet(tuple(net(p) for p in PARENTS[parents]), plen)
        return store.open_pool(target, scope=scope, label="local", owner="o")

    def remember(self, op: tuple[Any, ...], result: object) -> None:
        if isinstance(result, Granted) and result.created:
            self.pools.append((result.pool.subnet, result.pool.scope))
        if op[0] in ("next", "claim") and result not in (None, False, "unknown pool") and self.pools:
            subnet, scope = self.pools[op[1] % len(self.pools)]
            base = subnet.network_address
            address = result if op[0] == "next" else base + op[2] % subnet.num_addresses
            self.claimed.append((subnet, scope, address))  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_lua_tree_matches_memory_store_step_by_step(ops: list[tuple[Any, ...]]) -> None:
    memory, fake = MemoryStore(), fake_store()
    script = Script()
    for op in ops:
        expected = script.call(memory, op)
        got = script.call(fake, op)
        assert normal(got) == normal(expected), op
        script.remember(op, expected)
    assert sorted((b.subnet.version, b.subnet, b.label) for b in fake.blocks()) == sorted(
        (b.subnet.version, b.subnet, b.label) for b in memory.blocks()
    )
    pools = sorted((p.subnet.version, p.subnet, p.scope) for p in memory.pools())
    assert sorted((p.subnet.version, p.subnet, p.scope) for p in fake.pools()) == pools
    for _, subnet, scope in pools:
        assert addresses_of(fake, subnet, scope) == addresses_of(memory, subnet, scope)
