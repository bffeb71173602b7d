"""A Redis that forgets, round after round, under load from three drivers: nothing may be handed out twice.

Each round lets the clients work, then makes the server forget in one of the ways
real deployments do, and lets them go on while the drivers find out and rebuild:

* ``flushall``: FLUSHALL mid-load (an operator's mistake, or an eviction of everything);
* ``restart empty``: kill -9, and a restart without persistence;
* ``older snapshot``: SAVE, more claims, kill -9, and a restart from that older RDB file;
* ``failover (durable)``: with ``?wait_replicas=1`` (every claim acknowledged only once the
  replica has it), kill -9 the primary and promote its replica behind the same address;
* ``failover (paused replica)``: the same without the option, after the replica stopped
  receiving writes: the promoted replica lacks the last claims, as asynchronous
  replication allows, and the drivers must find that out, never hand them out again.

The clients keep a ledger of what they were granted and still hold. Every grant is
checked against it at once: a subnet that overlaps one held by any client, or an
address already held in its pool, is a duplicate. After each round, once the drivers
have rebuilt, the map must hold everything held. Counted over all rounds, the
duplicates must be 0. The figures (rounds, requests, refusals, recovery times) are
printed for the README's reliability table.
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mini_ipam import protocol
from mini_ipam.testing import RedisProcess
from mini_ipam.unix_http import get_json
from stores import from_url
from tests.driver_process import DriverProcess, call
from tests.hardening.support import Holdings
from tests.servers import require_binary, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

DRIVERS = 3
CLIENTS = 2
PARENT = ipaddress.ip_network("10.200.0.0/20")
WINDOW = "2s"  # --recovery-window
ROUNDS = int(os.environ.get("MINI_IPAM_MAP_LOSS_ROUNDS", "4"))  # per kind of fault
# Pools one client holds at most (it releases one before asking for more): six clients of /27-/29
# pools stay well inside the /20, so a round never stalls for want of space.
HELD_AT_MOST = 20
LOG_LEVEL = os.environ.get("MINI_IPAM_TEST_LOG_LEVEL", "warning")  # info to follow a round in the drivers' logs


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """A redis-server with a TCP port (replication needs one) and a Unix socket; its data in ``directory``."""

    def __init__(self, directory: Path, *extra: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = RedisProcess(directory, "--port", str(self.port), "--dbfilename", "dump.rdb", *extra,
                                    binary=require_binary("redis-server"))  # fmt: skip

    @property
    def socket(self) -> Path:
        return self.process.socket

    def start(self, *more: str) -> None:
        """Start (again) with the flags given at creation, and ``more`` for this start only."""
        base = self.process.extra
        self.process.extra = (*base, *more)
        try:
            self.process.start()
        finally:
            self.process.extra = base

    def kill(self) -> None:
        assert self.process.process is not None
        self.process.process.kill()
        self.process.process.wait(timeout=10)
        self.process.process = None

    def client(self):  # type: ignore[no-untyped-def]
        return self.process.client()


class Address:
    """The one Unix socket path the drivers use: a symbolic link re-pointed at whichever server is primary."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def point_at(self, server: Server) -> None:
        staging = self.path.with_suffix(".new")
        staging.unlink(missing_ok=True)
        staging.symlink_to(server.socket)
        staging.replace(self.path)  # atomic: a reconnect finds the old server or the new one


@dataclass
class Ledger(Holdings):
    """The clients' holdings, with the requests' statuses and when each round's first subnet came."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    first_grant_after: dict[str, float] = field(default_factory=dict)  # round -> first RequestPool granted


def client(
    driver: DriverProcess, ledger: Ledger, mine: list[str], seed: int, stop: threading.Event, marks: dict[str, float]
) -> None:
    """Ask ``driver`` for pools and addresses and release them, until ``stop``; ``mine``: the pools it holds."""
    rng = random.Random(seed)
    while not stop.is_set():
        choice = rng.random()
        if mine and (choice < 0.12 or len(mine) >= HELD_AT_MOST):
            pool_id = mine.pop(rng.randrange(len(mine)))
            with ledger.lock:
                ledger.releasing(pool_id)
            status, _ = call(driver.socket_path, "IpamDriver.ReleasePool", protocol.release_pool(pool_id), 20)
            with ledger.lock:
                ledger.statuses[("ReleasePool", status)] += 1
                ledger.released(pool_id, status)
        elif mine and choice < 0.55:
            pool_id = rng.choice(mine)
            status, reply = call(driver.socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id), 20)
            with ledger.lock:
                ledger.statuses[("RequestAddress", status)] += 1
                if status == 200:
                    ledger.address_granted(pool_id, reply["Address"])
        else:
            body = protocol.request_pool(options={"size": str(rng.randint(27, 29))})
            status, reply = call(driver.socket_path, "IpamDriver.RequestPool", body, 20)
            with ledger.lock:
                ledger.statuses[("RequestPool", status)] += 1
                if status == 200:
                    ledger.pool_granted(reply["PoolID"], reply["Pool"])
                    mine.append(reply["PoolID"])
                    for name, moment in marks.items():
                        ledger.first_grant_after.setdefault(name, time.monotonic() - moment)
        time.sleep(rng.uniform(0, 0.005))


@pytest.fixture
def running() -> Iterator[list[DriverProcess]]:
    drivers: list[DriverProcess] = []
    yield drivers
    for driver in drivers:
        driver.stop()


def start_drivers(tmp_path: Path, url: str, running: list[DriverProcess]) -> list[DriverProcess]:
    for i in range(DRIVERS):
        driver = DriverProcess(tmp_path / f"d{i}.sock", "--store", url, "--pool", str(PARENT), "--host-id", f"h{i}",
                               "--store-timeout", "1", "--host-ttl", "3", "--recovery-window", WINDOW,
                               "--log-level", LOG_LEVEL)  # fmt: skip
        running.append(driver)
        driver.start(wait=False)
    for driver in running:
        driver.wait_ready(timeout=20)
    return running


def map_holds_everything(url: str, ledger: Ledger) -> list[str]:
    """What the ledger holds that the map does not (certain holdings only)."""
    store = from_url(url, read_only=True)
    try:
        in_map = {str(pool.subnet): pool for pool in store.pools()}
        missing: list[str] = []
        with ledger.lock:
            held = ledger.certain()
        for pool_id, addresses in held.items():
            pool = in_map.get(pool_id.split("/", 1)[1])
            if pool is None:
                missing.append(f"pool {pool_id}")
                continue
            claimed = {str(c.address) for c in store.address_claims(pool.subnet, pool.scope)}
            missing += [f"address {a} of {pool_id}" for a in sorted(addresses - claimed)]
        return missing
    finally:
        store.close()


def everyone_serves(drivers: list[DriverProcess]) -> bool:
    for driver in drivers:
        status, body = get_json(str(driver.socket_path), "/healthz")
        if status != 200 or body.get("map", {}).get("state") != "ready":
            return False
    return True


def run_rounds(
    drivers: list[DriverProcess],
    url: str,
    faults: dict[str, Callable[[], None]],
    capsys: pytest.CaptureFixture[str],
    title: str,
) -> Ledger:
    ledger = Ledger()
    stop = threading.Event()
    marks: dict[str, float] = {}
    # What each client holds outlives its thread: the next round's client goes on releasing it.
    holdings: dict[tuple[int, int], list[str]] = {(i, n): [] for i in range(len(drivers)) for n in range(CLIENTS)}
    threads = [
        threading.Thread(target=client, args=(driver, ledger, holdings[i, n], 100 * i + n, stop, marks))
        for i, driver in enumerate(drivers)
        for n in range(CLIENTS)
    ]
    recovered: dict[str, list[float]] = {name: [] for name in faults}
    lost: dict[str, list[int]] = {name: [] for name in faults}
    for thread in threads:
        thread.start()
    try:
        for number in range(ROUNDS):
            for name, fault in faults.items():
                wait_until(lambda: sum(ledger.statuses.values()) > 0, timeout=20, what="traffic")
                time.sleep(0.5)  # claims made before the fault
                before = sum(_lost_total(d) for d in drivers)
                marks.clear()
                fault()
                label = f"{name} {number}"
                ledger.round = label
                marks[label] = time.monotonic()
                wait_until(lambda label=label: label in ledger.first_grant_after, timeout=60,
                           what=f"a subnet granted again after {label}")  # fmt: skip
                recovered[name].append(ledger.first_grant_after[label])
                wait_until(lambda: everyone_serves(drivers), timeout=30, what=f"every driver ready after {label}")
                lost[name].append(sum(_lost_total(d) for d in drivers) - before)
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
                ledger.missing += [f"{label}: {what}" for what in map_holds_everything(url, ledger)]
                stop.clear()
                threads = [
                    threading.Thread(
                        target=client, args=(driver, ledger, holdings[i, n], 1000 * number + 100 * i + n, stop, marks)
                    )
                    for i, driver in enumerate(drivers)
                    for n in range(CLIENTS)
                ]
                for thread in threads:
                    thread.start()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    with capsys.disabled():
        requests = sum(ledger.statuses.values())
        refused = sum(count for (_, status), count in ledger.statuses.items() if status != 200)
        print(f"\nmap loss, {title}: {ROUNDS} rounds of {list(faults)}; {requests} requests, {refused} refused; "
              f"duplicates {len(ledger.duplicates)}")  # fmt: skip
        for name in faults:
            print(f"  {name}: drivers that found the map lost per round {lost[name]}; first subnet granted again "
                  f"after {[round(s, 2) for s in recovered[name]]} s")  # fmt: skip
        print(f"  statuses: {dict(sorted(ledger.statuses.items()))}")
        for line in ledger.duplicates[:10] + ledger.missing[:10]:
            print(f"  ! {line}")
    return ledger


def _lost_total(driver: DriverProcess) -> int:
    status, body = get_json(str(driver.socket_path), "/healthz")
    return int(body.get("map", {}).get("lost_total", 0)) if isinstance(body, dict) else 0


def test_a_forgetting_server_never_makes_the_drivers_hand_out_twice(
    tmp_path: Path, running: list[DriverProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    server = Server(tmp_path / "redis", "--save", "")
    server.start()
    url = f"unix://{server.socket}?prefix=loss"
    try:
        drivers = start_drivers(tmp_path, url, running)

        def flushall() -> None:
            server.client().flushall()

        def restart_empty() -> None:
            server.kill()
            (server.process.directory / "dump.rdb").unlink(missing_ok=True)
            server.start()

        def older_snapshot() -> None:
            server.client().save()  # the snapshot, while the clients go on claiming
            time.sleep(0.7)
            server.kill()
            server.start()  # it loads dump.rdb: the map as it was at the SAVE

        ledger = run_rounds(drivers, url, {"flushall": flushall, "restart empty": restart_empty,
                                           "older snapshot": older_snapshot}, capsys, "one server")  # fmt: skip
    finally:
        server.process.stop()
    assert ledger.duplicates == [] and ledger.missing == [], (ledger.duplicates, ledger.missing)


def test_a_failover_to_a_replica_never_makes_the_drivers_hand_out_twice(
    tmp_path: Path, running: list[DriverProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    """Behind one address (a link re-pointed, as a virtual IP would be): a primary and its replica."""
    address = Address(tmp_path / "redis.sock")
    servers = [Server(tmp_path / "a", "--save", ""), Server(tmp_path / "b", "--save", "")]
    primary, replica = servers
    primary.start()
    replica.start("--replicaof", "127.0.0.1", str(primary.port))
    address.point_at(primary)
    durable = f"unix://{address.path}?prefix=failover&wait_replicas=1&wait_timeout=300ms"
    try:
        drivers = start_drivers(tmp_path, durable, running)
        wait_until(lambda: replica.client().info("replication").get("master_link_status") == "up", timeout=20,
                   what="the replica to follow")  # fmt: skip

        def failover(pause_replica: bool) -> Callable[[], None]:
            def run() -> None:
                nonlocal primary, replica
                if pause_replica:
                    # The replica stops receiving: claims go on (without the wait option on this run they are
                    # acknowledged all the same), and it is promoted without them.
                    replica.client().replicaof("no", "one")
                    time.sleep(0.5)
                primary.kill()
                replica.client().replicaof("no", "one")
                address.point_at(replica)
                primary, replica = replica, primary
                replica.start("--replicaof", "127.0.0.1", str(primary.port))

            return run

        ledger = run_rounds(drivers, durable, {"failover (durable)": failover(False)}, capsys, "wait_replicas=1")
        assert ledger.duplicates == [] and ledger.missing == [], (ledger.duplicates, ledger.missing)
    finally:
        for driver in running:
            driver.stop()
        running.clear()
    # Without the option a promoted replica may lack acknowledged claims: found out, never handed out again.
    plain = f"unix://{address.path}?prefix=plain"
    (tmp_path / "plain").mkdir()
    drivers = start_drivers(tmp_path / "plain", plain, running)
    try:
        ledger = run_rounds(drivers, plain, {"failover (paused replica)": failover(True)}, capsys, "no wait option")
    finally:
        for server in servers:
            if server.process.process is not None:
                os.kill(server.process.pid, signal.SIGCONT)
            server.process.stop()
    assert ledger.duplicates == [] and ledger.missing == [], (ledger.duplicates, ledger.missing)
