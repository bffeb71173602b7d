"""Twin detection on a shared Redis: two live drivers with one host id, versus a restart after a crash."""

from __future__ import annotations

import json
import logging

import fakeredis
import pytest

from mini_ipam.presence import HostPresence
from stores.redis import RedisStore
from tests.servers import wait_until


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_two_live_drivers_with_one_host_id_are_both_told(
    client: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    first = HostPresence(RedisStore(client, "p"), "clone")
    second = HostPresence(RedisStore(client, "p"), "clone")
    assert first.beat() is None
    assert second.beat() is None  # one look proves nothing yet
    assert first.beat() is None
    twin = second.beat()
    assert twin is not None and twin.instance == first.instance
    seen_by_first = first.beat()
    assert seen_by_first is not None and seen_by_first.instance == second.instance
    assert [r.levelno for r in caplog.records].count(logging.ERROR) == 2
    assert "another live mini-ipam uses host id 'clone'" in caplog.text


def test_different_host_ids_are_not_twins(client: fakeredis.FakeRedis) -> None:
    a, b = HostPresence(RedisStore(client, "p"), "host-a"), HostPresence(RedisStore(client, "p"), "host-b")
    for _ in range(3):
        assert a.beat() is None and b.beat() is None


def test_a_restart_after_a_crash_is_not_a_twin(client: fakeredis.FakeRedis) -> None:
    crashed = HostPresence(RedisStore(client, "p"), "h", ttl=0.3)
    crashed.beat()  # and then it is killed: no more beats, its key is left to expire
    restarted = HostPresence(RedisStore(client, "p"), "h", ttl=0.3)
    assert restarted.beat() is None
    assert restarted.beat() is None  # the old key's counter stands still
    wait_until(lambda: client.get("{p}:host:h") is None, timeout=5, what="the dead driver's key to expire")
    assert restarted.beat() is None
    assert json.loads(client.get("{p}:host:h"))["instance"] == restarted.instance


def test_a_clean_stop_gives_the_key_up(client: fakeredis.FakeRedis) -> None:
    first = HostPresence(RedisStore(client, "p"), "h")
    first.beat()
    first.stop()
    assert client.get("{p}:host:h") is None
    second = HostPresence(RedisStore(client, "p"), "h")
    assert second.beat() is None
    assert second.beat() is None and second.twin is None


def test_the_background_thread_beats(client: fakeredis.FakeRedis) -> None:
    presence = HostPresence(RedisStore(client, "p"), "h", ttl=3)
    presence.start(interval=0.05)
    try:
        wait_until(lambda: json.loads(client.get("{p}:host:h") or "{}").get("beat", 0) >= 3, what="three beats")
    finally:
        presence.stop()
