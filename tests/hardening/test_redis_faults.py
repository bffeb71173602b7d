"""Redis restarted, paused and killed under load from three drivers, and what a 503 promises.

The Redis here keeps an append-only file synced on every write, so a restart or a
kill -9 of Redis itself loses nothing it acknowledged; any difference between what
the clients were told and what Redis holds is then the driver's doing.

While Redis is away every request must fail fast (503, "the address store failed",
within --store-timeout + 1 s), the drivers must recover by themselves once it is
back, and afterwards the map must hold exactly what was acknowledged: no overlaps,
no half-claims in the keys, nothing from a call that was answered with a 503.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mini_ipam import protocol
from mini_ipam.unix_http import get_json
from stores import from_url
from tests.driver_process import DriverProcess, call
from tests.hardening.support import DurableRedis, check_map, check_redis_keys
from tests.servers import BUSY_LOOP, RedisServer, wait_until

pytestmark = pytest.mark.redis

TIMEOUT = 1.0  # --store-timeout
# Every answer while Redis is away comes within this: the requests sent here make at most two store
# calls (a gateway's or a ReleasePool's read, then the change), each bounded by one timeout.
FAIL_FAST = 2 * TIMEOUT + 0.5
DRIVERS = 3
CLIENTS_PER_DRIVER = 2
PARENT = "10.100.0.0/20"
EXPLICIT = ipaddress.ip_network("10.120.0.0/20")
STORE_FAILED = "the address store failed"


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = DurableRedis(directory)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def running() -> Iterator[list[DriverProcess]]:
    """Drivers a test started; stopped at teardown whatever happened."""
    drivers: list[DriverProcess] = []
    yield drivers
    for driver in drivers:
        driver.stop()


def start_drivers(tmp_path: Path, url: str, running: list[DriverProcess]) -> list[DriverProcess]:
    drivers = [
        DriverProcess(tmp_path / f"host{i}.sock", "--store", url, "--pool", PARENT, "--host-id", f"host-{i}",
                      "--store-timeout", str(TIMEOUT), "--log-level", "warning")
        for i in range(DRIVERS)
    ]  # fmt: skip
    for driver in drivers:
        running.append(driver)
        driver.start(wait=False)
    for driver in drivers:
        wait_until(driver.answers, timeout=20, what=f"driver {driver.socket_path.name}")
    return drivers


@dataclass
class Call:
    host: int
    method: str
    started: float
    took: float
    status: int | None  # None: no answer at all
    err: str = ""
    reply: dict[str, str] = field(default_factory=dict)


@dataclass
class Books:
    """What every client was told, per driver (host); pools touched by a 503 are frozen for the final check."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pools: dict[str, tuple[int, set[str]]] = field(default_factory=dict)  # PoolID -> (host, acknowledged addresses)
    frozen: dict[str, tuple[str, float]] = field(default_factory=dict)  # PoolID -> the call that got a 503 on it
    refused_explicit: dict[str, list[float]] = field(default_factory=dict)  # subnet -> when its RequestPool got a 503
    refused_dynamic: int = 0  # dynamic RequestPools answered with a 503
    regranted: list[str] = field(default_factory=list)  # held pools granted again after a 503'd release
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def timed(driver: DriverProcess, host: int, books: Books, method: str, body: dict[str, object]) -> Call:
    started = time.monotonic()
    try:
        status, reply = call(driver.socket_path, f"IpamDriver.{method}", body, timeout=FAIL_FAST + 8)
        took = time.monotonic() - started
        result = Call(host, method, started, took, status, str(reply.get("Err", "")), reply)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result = Call(host, method, started, time.monotonic() - started, None, repr(exc))
    with books.lock:
        books.calls.append(result)
        if result.status == 503 and STORE_FAILED not in result.err:
            books.errors.append(f"{method}: 503 without '{STORE_FAILED}': {result.err}")
        elif result.status not in (200, 409, 503):
            books.errors.append(f"{method} {body}: {result.status} {result.err}")
    return result


def client(driver: DriverProcess, host: int, books: Books, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    while not stop.is_set():
        usable = [p for p in mine if p not in books.frozen]
        choice = rng.random()
        if usable and choice < 0.15:
            pool_id = usable[rng.randrange(len(usable))]
            with books.lock:
                _, addresses = books.pools.pop(pool_id)
            result = timed(driver, host, books, "ReleasePool", protocol.release_pool(pool_id))
            if result.status == 503 and "may or may not have happened" not in result.reply["Err"]:
                books.errors.append(f"a failed release must say its outcome is unknown: {result.reply}")
            with books.lock:
                if result.status == 503:  # the release may have happened: both outcomes are accepted below
                    books.pools[pool_id] = (host, addresses)
                    books.frozen[pool_id] = ("ReleasePool", result.started)
                else:
                    mine.remove(pool_id)
        elif usable and choice < 0.25:
            pool_id = rng.choice(usable)
            with books.lock:
                held = sorted(books.pools[pool_id][1])
            if not held:
                continue
            address = rng.choice(held)
            with books.lock:
                books.pools[pool_id][1].discard(address)
            result = timed(driver, host, books, "ReleaseAddress", protocol.release_address(pool_id, address))
            if result.status == 503:
                with books.lock:
                    books.pools[pool_id][1].add(address)
                    books.frozen[pool_id] = ("ReleaseAddress", result.started)
        elif usable and choice < 0.55:
            pool_id = rng.choice(usable)
            result = timed(driver, host, books, "RequestAddress", protocol.request_address(pool_id, ""))
            with books.lock:
                if result.status == 200:
                    books.pools[pool_id][1].add(result.reply["Address"].split("/")[0])
                elif result.status == 503:
                    books.frozen[pool_id] = ("RequestAddress", result.started)
        else:
            explicit = choice > 0.85
            if explicit:
                size = rng.randint(24, 28)
                offset = rng.randrange(EXPLICIT.num_addresses >> (32 - size)) << (32 - size)
                subnet = str(ipaddress.ip_network((int(EXPLICIT.network_address) + offset, size)))
                body = protocol.request_pool(pool=subnet)
            else:
                body = protocol.request_pool(options={"size": str(rng.randint(27, 30))})
            result = timed(driver, host, books, "RequestPool", body)
            with books.lock:
                if result.status == 200:
                    pool_id = result.reply["PoolID"]
                    if pool_id in books.pools and pool_id in books.frozen:
                        books.regranted.append(pool_id)
                    elif pool_id in books.pools:
                        books.errors.append(f"{pool_id} handed out twice")
                    books.pools[pool_id] = (host, set())
                    mine.append(pool_id)
                elif result.status == 503 and explicit:
                    books.refused_explicit.setdefault(str(body["Pool"]), []).append(result.started)
                elif result.status == 503:
                    books.refused_dynamic += 1
        time.sleep(rng.uniform(0, 0.01))


def recovered_since(books: Books, moment: float) -> bool:
    with books.lock:
        return {c.host for c in books.calls if c.started > moment and c.status == 200} == set(range(DRIVERS))


@pytest.mark.slow
def test_redis_restarted_paused_and_killed_under_load(
    tmp_path: Path, durable_redis: DurableRedis, running: list[DriverProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = "faults"
    url = f"{durable_redis.url}?prefix={prefix}"
    drivers = start_drivers(tmp_path, url, running)
    books = Books()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(driver, host, books, host * 10 + n, stop))
        for host, driver in enumerate(drivers)
        for n in range(CLIENTS_PER_DRIVER)
    ]
    windows: dict[str, tuple[float, float]] = {}
    recovery: dict[str, float] = {}
    assert durable_redis.process is not None
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(c.status == 200 for c in books.calls) >= 60, timeout=30, what="warm-up traffic")

        def fault(name: str, away: float, leave: object, back: object) -> None:
            began = time.monotonic()
            leave()  # type: ignore[operator]
            time.sleep(away)
            back()  # type: ignore[operator]
            ended = time.monotonic()
            windows[name] = (began, ended)
            wait_until(lambda: recovered_since(books, ended), timeout=15, what=f"every driver to recover after {name}")
            recovery[name] = time.monotonic() - ended

        pid = durable_redis.process.pid
        fault("paused", 2.5, lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT))
        fault("restarted", 1.5, durable_redis.stop, durable_redis.start)

        def kill() -> None:
            assert durable_redis.process is not None
            durable_redis.process.kill()
            durable_redis.process.wait(timeout=10)

        fault("killed", 1.5, kill, durable_redis.start)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)

    statuses = Counter((c.method, c.status) for c in books.calls)
    during = {name: Counter(c.status for c in books.calls if begin <= c.started <= end)
              for name, (begin, end) in windows.items()}  # fmt: skip
    slowest = max(c.took for c in books.calls)
    with capsys.disabled():
        print(f"\nredis faults: {len(books.calls)} calls from {DRIVERS} drivers; statuses {dict(statuses)}")
        print(f"  statuses of calls started while Redis was away: { {k: dict(v) for k, v in during.items()} }")
        print(
            f"  slowest answer {slowest:.2f}s; recovered after {recovery}; 503s on RequestPool: "
            f"{books.refused_dynamic} dynamic, {len(books.refused_explicit)} explicit; frozen pools {len(books.frozen)}"
        )

    # Clear errors, fast, and by itself again.
    assert books.errors == [], books.errors[:10]
    unanswered = [c for c in books.calls if c.status is None]
    assert unanswered == [], f"{len(unanswered)} calls got no answer at all: {unanswered[:3]}"
    slow = [c for c in books.calls if c.took > FAIL_FAST]
    shown = [(c.method, c.status, round(c.took, 2)) for c in slow[:5]]
    assert slow == [], f"{len(slow)} answers took longer than {FAIL_FAST}s: {shown}"
    for name, counts in during.items():
        assert counts[503] > 0, f"no request failed while Redis was {name}: the fault did not bite"
    assert set(recovery) == {"paused", "restarted", "killed"}

    # A timed-out claim that reached Redis is undone before its driver's next call: make one on each.
    for driver in drivers:
        assert get_json(str(driver.socket_path), "/healthz")[0] == 200

    # The map: sound, no half-claims, and exactly what was acknowledged.
    client_ = durable_redis.client()
    store = from_url(url)
    try:
        raw = check_redis_keys(client_, prefix)
        held = check_map(store)
        assert {(cidr, scope): set(a) for (cidr, scope), a in held.items()} == raw
        in_redis = {f"local/{cidr}": (int(scope.rsplit("-", 1)[1]), a) for (cidr, scope), a in raw.items()}
        lost = sorted(set(books.pools) - set(in_redis))
        # A release answered with a 503 may have happened (its reply says so); a claim answered with one may not.
        released_503 = {p for p, (method, _) in books.frozen.items() if method.startswith("Release")}
        landed_503 = sorted(p for p in lost if p in books.frozen and p not in released_503)
        assert [p for p in lost if p not in books.frozen] == [], "acknowledged pools missing from Redis"
        orphans = sorted(set(in_redis) - set(books.pools))
        explicit_503 = [p for p in orphans if p.split("/", 1)[1] in books.refused_explicit]
        changed = [
            p for p in set(books.pools) & set(in_redis) if in_redis[p] != books.pools[p] and p not in released_503
        ]
        assert not [p for p in changed if p not in books.frozen], "addresses differ in pools no 503 touched"

        def when(started: float) -> str:
            return next((n for n, (b, e) in windows.items() if b - 0.1 <= started <= e + 0.1), "back")

        def frozen(pool_ids: list[str]) -> dict[str, str]:
            return {p: f"{books.frozen[p][0]} while Redis was {when(books.frozen[p][1])}" for p in pool_ids}

        problems = {
            "pools handed out again although their holder was told its release changed nothing": frozen(
                [p for p in books.regranted if p not in released_503]
            ),
            "pools whose release got a 503 but are gone": frozen(landed_503),
            "pools nobody acknowledged (every call was answered, so each is a 503'd RequestPool that landed)": orphans,
            "explicit subnets among them, and when their 503 came": {
                p: sorted({when(t) for t in books.refused_explicit[p.split("/", 1)[1]]}) for p in explicit_503
            },
            "pools whose addresses changed under a 503": frozen(sorted(changed)),
        }
    finally:
        store.close()

    # Released through the drivers, everything goes, the unacknowledged too: no record is left behind.
    drivers_by_host = dict(enumerate(drivers))
    try:
        for pool_id, (host, _) in sorted(in_redis.items()):
            assert (
                call(drivers_by_host[host].socket_path, "IpamDriver.ReleasePool", protocol.release_pool(pool_id))[0]
                == 200
            )
        left = {k.decode() for k in client_.scan_iter(match="{" + prefix + "}:*")}
        # The map's identity, the hosts' leases and the last request records are all that may remain.
        kinds = {"settings", "host", "twins", "req", "map", "alive", "probe"}
        assert {k.split(":", 2)[1] for k in left} <= kinds, sorted(left)
    finally:
        client_.close()
    assert not any(problems.values()), f"calls answered with a 503 changed the map: {problems}"


def test_a_503_means_nothing_changed_even_when_redis_stalls_right_after_running_the_call(
    tmp_path: Path, redis_server: RedisServer, running: list[DriverProcess]
) -> None:
    """Redis runs the driver's script, then stalls before the reply is written.

    A 0.3 s busy script holds Redis while the driver's RequestPool arrives; a 2 s one
    is queued right behind it. When the first ends, Redis runs the driver's script
    (well within its deadline) and then the 2 s one, before it writes any reply: the
    driver gives up after --store-timeout and answers 503 "nothing was changed".
    """
    url = f"{redis_server.url}?prefix=stall{os.getpid()}"
    driver = DriverProcess(tmp_path / "stall.sock", "--store", url, "--pool", PARENT, "--store-timeout", str(TIMEOUT),
                           "--host-id", "stall", "--log-level", "warning")  # fmt: skip
    running.append(driver)
    driver.start()
    holder, sleeper = redis_server.client(), redis_server.client()
    holder.ping()
    sleeper.ping()  # both connected now: their commands reach Redis the moment they are sent
    outcome: dict[str, object] = {}
    try:
        warm = protocol.request_pool(pool="10.100.1.0/24")
        assert call(driver.socket_path, "IpamDriver.RequestPool", warm)[0] == 200  # its connection is open now

        def request() -> None:
            body = protocol.request_pool(pool="10.100.7.0/24")
            outcome["reply"] = call(driver.socket_path, "IpamDriver.RequestPool", body, timeout=10)

        hold = threading.Thread(target=holder.eval, args=(BUSY_LOOP, 0, 300_000))
        hold.start()
        time.sleep(0.05)
        asking = threading.Thread(target=request)
        asking.start()
        time.sleep(0.1)
        sleeper.eval(BUSY_LOOP, 0, 2_000_000)
        hold.join()
        asking.join()
        status, reply = outcome["reply"]  # type: ignore[misc]
        # The driver undoes a timed-out claim that landed before its next call goes out: make one.
        assert get_json(str(driver.socket_path), "/healthz")[0] == 200
        store = from_url(url)
        try:
            claimed = "10.100.7.0/24" in {str(b.subnet) for b in store.blocks()}
        finally:
            store.close()
        if status == 503:
            assert "nothing was changed" in reply["Err"]
            assert not claimed, (
                f"answered {status} {reply['Err']!r}, yet 10.100.7.0/24 is claimed: the subnet is lost to every "
                "client until someone releases a pool nobody knows it holds"
            )
        else:
            assert status == 200 and claimed, (status, reply)
    finally:
        holder.close()
        sleeper.close()
        client = redis_server.client()
        keys = list(client.scan_iter(match="{" + f"stall{os.getpid()}" + "}:*"))
        if keys:
            client.delete(*keys)
        client.close()
