"""A real driver on a real Redis that forgets: what the engine, the operator and Prometheus see.

The store-level rules are in ``tests/test_map_identity.py``; the campaign of faults
under load in ``tests/hardening/test_map_loss.py``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mini_ipam import protocol
from mini_ipam.unix_http import UnixHTTPConnection, get_json
from tests.driver_process import DriverProcess, call
from tests.servers import RedisServer, require_binary, wait_until

pytestmark = pytest.mark.redis

PARENT = "10.70.0.0/24"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis")
    redis.directory.mkdir()
    redis.start()
    yield redis
    redis.stop()


def start(tmp_path: Path, url: str, name: str = "a", *flags: str) -> DriverProcess:
    return DriverProcess(
        tmp_path / f"{name}.sock", "--store", url, "--pool", PARENT, "--pool6", "fd70::/48", "--host-id", name,
        "--host-ttl", "3", "--recovery-window", "2s", *flags,
    ).start()  # fmt: skip


def request_pool(driver: DriverProcess, **options: str) -> tuple[int, dict[str, Any]]:
    return call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(options=options or None))


def health(driver: DriverProcess) -> tuple[int, dict[str, Any]]:
    status, body = get_json(str(driver.socket_path), "/healthz")
    assert isinstance(body, dict)
    return status, body


def metric(driver: DriverProcess, name: str) -> float | None:
    connection = UnixHTTPConnection(str(driver.socket_path))
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_flushed_map_is_found_out_reported_and_rebuilt_without_handing_anything_out_twice(
    tmp_path: Path, server: RedisServer
) -> None:
    url = f"{server.url}?prefix=flushed"
    driver = start(tmp_path, url)
    try:
        held = [request_pool(driver)[1]["Pool"] for _ in range(3)]
        pool_id = f"local/{held[0]}"
        gateway = call(driver.socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id, gateway=True))
        v6 = call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(v6=True))[1]["Pool"]
        assert metric(driver, "mini_ipam_map_lost_total") == 0
        server.client().flushall()
        status, reply = request_pool(driver)
        assert status == 503
        assert "was lost" in reply["Err"] and "nothing was changed" in reply["Err"] and "retry" in reply["Err"]
        for _ in range(20):  # the engine retries: every refusal is one sentence, the log says it once
            status, reply = request_pool(driver)
            if status == 200:
                break
        wait_until(lambda: request_pool(driver)[0] == 200, timeout=15, what="the rebuilt map to hand out again")
        status, body = health(driver)
        assert status == 200 and body["map"]["lost_total"] == 1 and body["map"]["rebuilt_total"] == 1
        assert "re-asserted 4 pools and 1 addresses" in body["map"]["last_rebuild"]
        granted = [request_pool(driver)[1]["Pool"] for _ in range(3)]
        assert not set(granted) & set(held), "a held subnet was handed out again"
        again = call(driver.socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id, gateway=True))
        assert again[0] == 200 and again[1]["Address"] != gateway[1]["Address"]  # the gateway is still held
        assert call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(v6=True))[1]["Pool"] != v6
        assert metric(driver, "mini_ipam_map_lost_total") == 1
        assert metric(driver, "mini_ipam_map_rebuilt_total") == 1
    finally:
        driver.stop()
    errors = [line for line in driver.log_text().splitlines() if " ERROR " in line and "was lost" in line]
    assert len(errors) == 1, errors  # once, not once per request


def test_the_ula_parent_stays_and_readers_never_write(tmp_path: Path, server: RedisServer) -> None:
    url = f"{server.url}?prefix=ula"
    environment = {**os.environ, "MINI_IPAM_STORE": url, "MINI_IPAM_STORE_TIMEOUT": "2"}
    for command in (["ls", "--json"], ["plan", "--size", "28"]):
        result = subprocess.run([sys.executable, "-m", "mini_ipam", *command], capture_output=True, text=True,
                                env=environment, check=False, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert list(server.client().scan_iter(match="{ula}:*")) == []  # the read-only commands wrote nothing
    driver = DriverProcess(tmp_path / "u.sock", "--store", url, "--pool", PARENT, "--host-id", "u",
                           "--recovery-window", "0").start()  # fmt: skip
    try:
        ula = server.client().hget("{ula}:settings", "pool6")
        assert ula is not None and ipaddress.ip_network(ula.decode()).prefixlen == 48  # made once, by the driver
        listing = subprocess.run([sys.executable, "-m", "mini_ipam", "ls", "--json"], capture_output=True, text=True,
                                 env=environment, check=True, timeout=60).stdout  # fmt: skip
        assert ula.decode() in [p["parent"] for p in json.loads(listing)["parents"]]
        server.client().flushall()
        wait_until(lambda: (health(driver)[1].get("map") or {}).get("rebuilt_total") == 1, timeout=15,
                   what="the driver to rebuild the map")  # fmt: skip
        assert server.client().hget("{ula}:settings", "pool6") == ula  # re-asserted, not made anew
    finally:
        driver.stop()


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary on a TCP port of loopback, and a read-only replica of it."""
    import socket

    def port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    primary_port = port()
    primary = RedisServer(tmp_path / "p", options=("--port", str(primary_port)))
    follower = RedisServer(
        tmp_path / "r", options=("--port", str(port()), "--replicaof", "127.0.0.1", str(primary_port))
    )
    for node in (primary, follower):
        node.directory.mkdir()
        node.start()
    yield primary, follower
    follower.stop()
    primary.stop()


def test_what_answers_ping_but_cannot_take_a_claim_fails_the_health_check(
    tmp_path: Path, server: RedisServer, replica: tuple[RedisServer, RedisServer]
) -> None:
    admin = server.client()
    admin.acl_setuser("noscript", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"])
    _, follower = replica
    sentinel_dir = tmp_path / "sentinel"
    sentinel_dir.mkdir()
    config = sentinel_dir / "sentinel.conf"
    config.write_text("port 0\n")
    sentinel = subprocess.Popen(
        [require_binary("redis-server"), str(config), "--sentinel", "--unixsocket", str(sentinel_dir / "s.sock"),
         "--dir", str(sentinel_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: (sentinel_dir / "s.sock").exists(), timeout=10, what="the sentinel's socket")
        cases = {
            "a user without script rights": (f"unix://noscript:pw@{server.socket}?prefix=acl", "+@scripting"),
            "a read-only replica": (f"unix://{follower.socket}?prefix=ro", "point the store at the primary"),
            "a Sentinel port": (f"unix://{sentinel_dir / 's.sock'}?prefix=sentinel", "a Sentinel's port?"),
        }
        for number, (what, (url, error)) in enumerate(cases.items()):
            driver = DriverProcess(tmp_path / f"h{number}.sock", "--store", url, "--pool", PARENT,
                                   "--store-timeout", "2").start(settled=False)  # fmt: skip
            try:
                status, body = health(driver)
                assert status == 503 and error in body["error"], (what, body)
                status, reply = request_pool(driver)
                assert status == 503 and error in reply["Err"], (what, reply)
            finally:
                driver.stop()
    finally:
        sentinel.terminate()
        sentinel.wait(timeout=10)


def test_settings_that_could_lose_or_evict_claims_are_warned_about(tmp_path: Path) -> None:
    cases = {
        ("--appendonly", "no"): "appendonly is off",
        ("--appendonly", "yes", "--appendfsync", "everysec"): "appendfsync is 'everysec'",
        ("--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "allkeys-lru"): "may evict",
        ("--appendonly", "yes", "--appendfsync", "always"): None,
    }
    for number, (flags, warning) in enumerate(cases.items()):
        redis = RedisServer(tmp_path / f"r{number}", options=flags)
        redis.directory.mkdir()
        redis.start()
        driver = DriverProcess(tmp_path / f"w{number}.sock", "--store", f"{redis.url}?prefix=w", "--pool", PARENT,
                               "--recovery-window", "0").start()  # fmt: skip
        try:
            status, body = health(driver)
            assert status == 200, body
            found = [w for w in body.get("warnings", []) if w.startswith("the store:")]
            if warning is None:
                assert found == [] and body["status"] == "ok", body
            else:
                assert body["status"] == "warning" and any(warning in w for w in found), (flags, body)
                assert warning in driver.log_text()  # said at start-up too
        finally:
            driver.stop()
            redis.stop()


def test_wait_aof_needs_a_server_with_waitaof(tmp_path: Path, server: RedisServer) -> None:
    info = server.client().info("server")
    try:
        server.client().execute_command("WAITAOF", 0, 0, 0)
        has_waitaof = True
    except Exception as exc:  # redis.ResponseError: "unknown command" before Redis 7.2
        has_waitaof = "unknown command" not in str(exc).lower()
    command = [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(tmp_path / "x.sock"), "--store",
               f"{server.url}?prefix=aof&wait_aof=0", "--local-record", str(tmp_path / "x.json")]  # fmt: skip
    if has_waitaof:  # Redis >= 7.2, Valkey >= 8: not without an append-only file; with one a claim waits for it
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2 and "keeps none" in result.stderr, result.stderr
        server.client().config_set("appendonly", "yes")
        driver = DriverProcess(tmp_path / "x.sock", *command[6:], "--pool", PARENT, "--recovery-window", "0")
        driver.start()
        try:
            assert request_pool(driver)[0] == 200
        finally:
            driver.stop()
        return
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "wait_aof needs WAITAOF" in result.stderr and info["redis_version"] in result.stderr
    assert "Traceback" not in result.stderr
