"""Several real ``mini-ipam serve`` processes, as several hosts, on one real redis-server."""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mini_ipam import protocol
from stores import from_url
from tests.driver_process import DriverProcess, call
from tests.helpers import addresses_of
from tests.servers import RedisServer, wait_until

pytestmark = pytest.mark.redis

PARENT = "10.100.0.0/20"
OUTSIDE = ipaddress.ip_network("10.200.0.0/20")
HOSTS = 4


@pytest.fixture
def redis_for_test(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, so it may be paused and killed."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def start_drivers(tmp_path: Path, url: str, count: int, *extra: str) -> list[DriverProcess]:
    drivers = []
    for i in range(count):
        flags = ("--store", url, "--pool", PARENT, "--host-id", f"host-{i}", "--log-level", "warning", *extra)
        drivers.append(DriverProcess(tmp_path / f"host{i}.sock", *flags).start())
    return drivers


@dataclass
class Holdings:
    """What every client holds, as acknowledged by the drivers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pools: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (host, PoolID) -> addresses
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def client(driver: DriverProcess, host: str, holdings: Holdings, seed: int, operations: int) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    for _ in range(operations):
        choice = rng.random()
        if mine and choice < 0.25:
            pool_id = mine.pop(rng.randrange(len(mine)))
            with holdings.lock:
                del holdings.pools[(host, pool_id)]
            status, reply = call(driver.socket_path, "IpamDriver.ReleasePool", protocol.release_pool(pool_id))
            if status != 200:
                holdings.errors.append(f"release {pool_id}: {reply}")
        elif mine and choice < 0.55:
            pool_id = rng.choice(mine)
            status, reply = call(driver.socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id, ""))
            if status == 200:
                with holdings.lock:
                    holdings.pools[(host, pool_id)].add(reply["Address"].split("/")[0])
            elif "no free address" not in reply["Err"]:
                holdings.errors.append(f"address in {pool_id}: {reply}")
        else:
            if choice < 0.8:
                body = protocol.request_pool(options={"size": str(rng.randint(24, 30))})
            else:
                size = rng.randint(22, 28)
                base = ipaddress.ip_network(PARENT) if rng.random() < 0.5 else OUTSIDE
                offset = rng.randrange(base.num_addresses >> (32 - size)) << (32 - size)
                subnet = ipaddress.ip_network((int(base.network_address) + offset, size))
                body = protocol.request_pool(pool=str(subnet), options={})
            status, reply = call(driver.socket_path, "IpamDriver.RequestPool", body)
            if status == 200:
                with holdings.lock:
                    holdings.pools[(host, reply["PoolID"])] = set()
                mine.append(reply["PoolID"])
            elif status == 409:
                with holdings.lock:
                    holdings.refused += 1
            else:
                holdings.errors.append(f"pool {body}: {reply}")


def test_four_hosts_share_one_map_without_overlaps(tmp_path: Path, redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=multihost{os.getpid()}"
    drivers = start_drivers(tmp_path, url, HOSTS)
    holdings = Holdings()
    try:
        threads = [
            threading.Thread(target=client, args=(driver, f"host-{i}", holdings, i * 100 + t, 120))
            for i, driver in enumerate(drivers)
            for t in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        for driver in drivers:
            driver.stop()
    assert holdings.errors == []
    assert holdings.refused > 0  # explicit subnets did collide, and were refused
    store = from_url(url)
    try:
        pools = store.pools()
        stored = {(pool.owner, f"local/{pool.subnet}"): pool for pool in pools}
        assert set(stored) == set(holdings.pools), "Redis holds exactly what the clients hold"
        for key, addresses in holdings.pools.items():
            pool = stored[key]
            assert {str(a) for a in addresses_of(store, pool.subnet, pool.scope)} == addresses
        subnets = sorted(pool.subnet for pool in pools)
        for a, b in zip(subnets, subnets[1:], strict=False):
            assert not a.overlaps(b), (a, b)
        assert {pool.owner for pool in pools} == {f"host-{i}" for i in range(HOSTS)}
    finally:
        store.close()


def request_pool(driver: DriverProcess, subnet: str = "") -> tuple[int, dict[str, str], float]:
    started = time.monotonic()
    status, reply = call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool=subnet))
    return status, reply, time.monotonic() - started


def test_a_host_cannot_take_what_another_holds(tmp_path: Path, redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=cross{os.getpid()}"
    a, b = start_drivers(tmp_path, url, 2)
    try:
        assert request_pool(a, "10.100.4.0/24")[0] == 200
        status, reply, _ = request_pool(b, "10.100.4.128/25")
        assert status == 409
        assert "held in address space local by host host-0" in reply["Err"]
        status, reply = call(b.socket_path, "IpamDriver.ReleasePool", protocol.release_pool("local/10.100.4.0/24"))
        assert (status, reply["Err"]) == (400, "pool local/10.100.4.0/24 is not held by host-1")
    finally:
        a.stop()
        b.stop()


def test_redis_paused_fails_fast_and_recovers(tmp_path: Path, redis_for_test: RedisServer) -> None:
    url = f"{redis_for_test.url}?prefix=pause"
    (driver,) = start_drivers(tmp_path, url, 1, "--store-timeout", "1")
    try:
        assert request_pool(driver)[0] == 200
        assert redis_for_test.process is not None
        os.kill(redis_for_test.process.pid, signal.SIGSTOP)
        status, reply, took = request_pool(driver)
        assert status == 503
        assert "the address store failed, nothing was changed" in reply["Err"]
        assert took < 3
        os.kill(redis_for_test.process.pid, signal.SIGCONT)
        wait_until(lambda: request_pool(driver)[0] == 200, timeout=10, what="the driver to recover")
    finally:
        driver.stop()
    store = from_url(url)
    try:
        # The refused request left nothing behind: exactly the two acknowledged pools.
        assert sorted(str(b.subnet) for b in store.blocks()) == ["10.100.0.0/28", "10.100.0.16/28"]
    finally:
        store.close()


def test_redis_down_at_start_up_still_opens_the_socket(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    (driver,) = start_drivers(tmp_path, f"{server.url}?prefix=late", 1, "--store-timeout", "1")
    try:
        assert call(driver.socket_path, "Plugin.Activate")[0] == 200
        status, reply, took = request_pool(driver)
        assert status == 503 and took < 3
        assert "redis" in reply["Err"].lower()
        server.start()
        wait_until(lambda: request_pool(driver)[0] == 200, timeout=10, what="the driver to reach Redis")
    finally:
        driver.stop()
        server.stop()


def test_redis_killed_and_restarted(tmp_path: Path, redis_for_test: RedisServer) -> None:
    url = f"{redis_for_test.url}?prefix=restart"
    (driver,) = start_drivers(tmp_path, url, 1, "--store-timeout", "1")
    try:
        assert request_pool(driver)[0] == 200
        redis_for_test.stop()  # no persistence configured: the map is gone with it
        status, reply, took = request_pool(driver)
        assert status == 503 and took < 3
        redis_for_test.start()
        wait_until(lambda: request_pool(driver)[0] == 200, timeout=10, what="the driver to reconnect")
    finally:
        driver.stop()


def test_twins_are_reported_and_a_restart_is_not(tmp_path: Path, redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=twins{os.getpid()}"
    flags = ("--store", url, "--host-id", "clone", "--host-ttl", "0.6")
    first = DriverProcess(tmp_path / "first.sock", *flags).start()
    second = DriverProcess(tmp_path / "second.sock", *flags).start()
    message = "another live mini-ipam uses host id 'clone' on this store"
    try:
        wait_until(lambda: message in first.log.read_text() and message in second.log.read_text(), timeout=15,
                   what="both twins to report each other")  # fmt: skip
    finally:
        second.stop()
    first.kill()  # a crash: its heartbeat is left behind, to lapse
    restarted = DriverProcess(tmp_path / "restarted.sock", *flags).start()
    try:
        store = from_url(url)
        try:
            key = "{" + f"twins{os.getpid()}" + "}:host:clone"
            client = store.client  # type: ignore[attr-defined]
            wait_until(lambda: str(restarted.process.pid).encode() in (client.get(key) or b""),  # type: ignore[union-attr]
                       timeout=15, what="the restarted driver to take the heartbeat over")  # fmt: skip
        finally:
            store.close()
        assert message not in restarted.log.read_text()
    finally:
        restarted.stop()


def evalsha_calls(client: object) -> int:
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.slow
def test_round_trips_per_request_stay_flat_as_the_map_fills(tmp_path: Path, redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?prefix=trips{os.getpid()}"
    # A quiet heartbeat (it would count among the EVALSHA calls), and no recovery window to wait out.
    (driver,) = start_drivers(
        tmp_path, url, 1, "--host-ttl", "3600", "--recovery-window", "0", "--pool", "10.64.0.0/14"
    )
    client = redis_server.client()
    trips: dict[str, list[int]] = {}

    def measure(label: str, method: str, body: dict[str, object]) -> dict[str, str]:
        before = evalsha_calls(client)
        status, reply = call(driver.socket_path, f"IpamDriver.{method}", body)
        assert status == 200, reply
        trips.setdefault(label, []).append(evalsha_calls(client) - before)
        return reply

    def one_network() -> None:
        pool = measure("RequestPool", "RequestPool", protocol.request_pool())
        gateway = {"RequestAddressType": "com.docker.network.gateway"}
        measure("RequestAddress gateway", "RequestAddress", protocol.request_address(pool["PoolID"], "", gateway))
        measure("RequestAddress", "RequestAddress", protocol.request_address(pool["PoolID"], ""))

    try:
        one_network()  # empty map
        for _ in range(3000):  # fill the /20 and go on into the /14
            call(driver.socket_path, "IpamDriver.RequestPool", protocol.request_pool())
        one_network()
        one_network()
    finally:
        driver.stop()
    for label, counts in trips.items():
        assert max(counts) <= 3, (label, counts)
        assert counts[0] == counts[-1], (label, counts)  # the same at any fill
    print(f"\nRedis round trips per request (EVALSHA calls, empty, then 3,000 pools): {trips}")
