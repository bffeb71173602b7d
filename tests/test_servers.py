"""The test harness's own servers: the busy loop holds every server family for the time asked, and ends."""

from __future__ import annotations

import time

import pytest

from tests.servers import BUSY_LOOP, RedisServer, ServerFamily

pytestmark = pytest.mark.redis


def test_the_busy_loop_holds_the_server_for_the_time_asked_then_ends(redis_server: RedisServer) -> None:
    client = redis_server.client()
    try:
        # A loop that waited on a frozen TIME would run until busy-reply-threshold: make that a minute.
        assert client.config_set("busy-reply-threshold", 60_000)
        started = time.monotonic()
        assert client.eval(BUSY_LOOP, 0, 300_000) == 1
        took = time.monotonic() - started
        assert 0.3 <= took < 30, f"the busy loop of 0.3 s took {took:.2f}s"
    finally:
        client.config_set("busy-reply-threshold", 5000)
        client.close()


def test_redis_server_is_the_family_under_test(redis_server: RedisServer, redis_family: ServerFamily) -> None:
    assert redis_server.family is redis_family
    client = redis_server.client()
    try:
        info = client.info("server")
    finally:
        client.close()
    assert info.get("valkey_version", info["redis_version"]) == redis_family.version
    assert ("valkey_version" in info) == (redis_family.name == "valkey")
