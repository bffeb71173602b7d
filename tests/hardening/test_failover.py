"""Failovers under load from three real drivers: fast clear errors while it lasts, then the new primary, and
nothing handed out twice.

* Sentinel (a primary, two replicas, three sentinels; ``redis+sentinel://``), with
  ``?wait_replicas=1``: each round kill -9s the primary; the sentinels promote a
  replica; the old primary is brought back as a replica before the next round.
  0 duplicates, nothing held missing from the map (a promoted replica that lacks the
  last claims is found as a lost map and rebuilt: counted).
* Sentinel without the option, after the only replica's link was cut: the promoted
  replica lacks the last acknowledged claims. The drivers must find the map lost
  (``lost_total`` goes up) and rebuild it; never hand anything out twice.
* Cluster (three masters with a replica each; ``redis+cluster://`` naming one seed
  node), with ``?wait_replicas=1``: each round moves the map's slot to its replica,
  by ``CLUSTER FAILOVER`` and by kill -9 of the owner (brought back at once) in turn.
  Its one replica has every acknowledged claim: no driver may find its map lost.

Clients call the drivers as the engine does and keep a ledger of what they hold: a
grant that overlaps a held subnet, or an address already held in its pool, is a
duplicate. Every refusal must come fast (``SLOWEST_ERROR``) and say what it is in
plain words (no raw MOVED/ASK, no traceback). After each round the map must hold
everything held. The figures (rounds, requests, errors, the slowest error, the
longest time from the fault until every driver granted a subnet again) are printed
as markdown table rows, for ``docs/reliability-failover.md``.

Rounds: ``MINI_IPAM_FAILOVER_ROUNDS`` (default 10 for each durable campaign: 20 failovers) and
``MINI_IPAM_FAILOVER_LOSSY_ROUNDS`` (default 2).
"""

from __future__ import annotations

import ipaddress
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mini_ipam import protocol
from mini_ipam.unix_http import get_json
from stores import from_url
from tests.driver_process import DriverProcess, call
from tests.hardening.support import Holdings
from tests.redis_deployments import SERVICE, ClusterSetup, SentinelSetup
from tests.servers import REDIS, VALKEY, ServerFamily, wait_until

pytestmark = [pytest.mark.slow]


def on(family: ServerFamily) -> pytest.MarkDecorator:
    """Run the test on ``family`` only (each campaign costs a minute or more): marked ``redis``."""
    return pytest.mark.parametrize(
        "redis_family", [pytest.param(family, id=family.id, marks=pytest.mark.redis)], indirect=True
    )


DRIVERS = 3
PARENT = ipaddress.ip_network("10.210.0.0/16")
HELD_AT_MOST = 40  # pools per client: beyond, it releases one (the parent never fills up)
STORE_TIMEOUT = 1.0  # --store-timeout
WINDOW = "1s"  # --recovery-window
SLOWEST_ERROR = 3 * STORE_TIMEOUT + 1.0
"""The longest a refused request may take: a request makes up to three store calls (settling a
call that failed unanswered, attaching, the call), each bounded by the store timeout."""

ROUNDS = int(os.environ.get("MINI_IPAM_FAILOVER_ROUNDS", "10"))
LOSSY_ROUNDS = int(os.environ.get("MINI_IPAM_FAILOVER_LOSSY_ROUNDS", "2"))
RAW = ("MOVED", "ASK ", "Traceback", "CLUSTERDOWN", "READONLY", "does not serve the map's slot")


@dataclass
class Ledger(Holdings):
    """The clients' holdings, with how the requests went."""

    raw_errors: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # the start of each refusal's text
    requests: int = 0
    refused: int = 0
    slowest_error: float = 0.0
    granted_at: dict[int, float] = field(default_factory=dict)  # driver -> time.monotonic() of its last RequestPool

    def record(self, status: int, reply: dict[str, object], took: float) -> None:
        self.requests += 1
        if status == 200:
            return
        self.refused += 1
        self.slowest_error = max(self.slowest_error, took)
        text = str(reply.get("Err", ""))
        self.errors[text[:160]] += 1
        if not text or any(word in text for word in RAW):
            self.raw_errors.append(f"{self.round}: {text!r}")


def client(number: int, driver: DriverProcess, ledger: Ledger, seed: int, stop: threading.Event) -> None:
    """One engine-like client of one driver: pools and addresses claimed and released at random."""
    rng = random.Random(seed)
    mine: list[str] = []
    while not stop.is_set():
        choice = rng.random()
        started = time.monotonic()
        if mine and (choice < 0.1 or len(mine) > HELD_AT_MOST):
            pool_id = mine.pop(rng.randrange(len(mine)))
            with ledger.lock:
                ledger.releasing(pool_id)
            status, reply = call(driver.socket_path, "IpamDriver.ReleasePool", protocol.release_pool(pool_id), 30)
            with ledger.lock:
                ledger.record(status, reply, time.monotonic() - started)
                ledger.released(pool_id, status)
        elif mine and choice < 0.5:
            pool_id = rng.choice(mine)
            status, reply = call(driver.socket_path, "IpamDriver.RequestAddress", protocol.request_address(pool_id), 30)
            with ledger.lock:
                ledger.record(status, reply, time.monotonic() - started)
                if status == 200:
                    ledger.address_granted(pool_id, str(reply["Address"]))
        else:
            body = protocol.request_pool(options={"size": str(rng.randint(27, 29))})
            status, reply = call(driver.socket_path, "IpamDriver.RequestPool", body, 30)
            with ledger.lock:
                ledger.record(status, reply, time.monotonic() - started)
                if status == 200:
                    ledger.pool_granted(str(reply["PoolID"]), str(reply["Pool"]))
                    mine.append(str(reply["PoolID"]))
                    ledger.granted_at[number] = time.monotonic()
        time.sleep(rng.uniform(0.002, 0.02))


@pytest.fixture
def running() -> Iterator[list[DriverProcess]]:
    drivers: list[DriverProcess] = []
    yield drivers
    for driver in drivers:
        driver.stop()


def start_drivers(directory: Path, url: str, running: list[DriverProcess]) -> list[DriverProcess]:
    directory.mkdir(parents=True, exist_ok=True)
    for number in range(DRIVERS):
        driver = DriverProcess(directory / f"d{number}.sock", "--store", url, "--pool", str(PARENT),
                               "--host-id", f"h{number}", "--store-timeout", str(STORE_TIMEOUT), "--host-ttl", "3",
                               "--recovery-window", WINDOW, "--log-level", "warning")  # fmt: skip
        running.append(driver)
        driver.start(wait=False)
    for driver in running:
        driver.wait_ready(timeout=30)
    return running


def lost_total(driver: DriverProcess) -> int:
    _, body = get_json(str(driver.socket_path), "/healthz")
    return int(body.get("map", {}).get("lost_total", 0)) if isinstance(body, dict) else 0


def everyone_ready(drivers: list[DriverProcess]) -> bool:
    for driver in drivers:
        status, body = get_json(str(driver.socket_path), "/healthz")
        if status != 200 or body.get("map", {}).get("state") != "ready":
            return False
    return True


def map_lacks(url: str, ledger: Ledger) -> list[str]:
    """What the clients hold for sure that the map does not."""
    store = from_url(url, read_only=True, timeout=5.0)
    try:
        in_map = {str(pool.subnet): pool for pool in store.pools()}
        with ledger.lock:
            held = ledger.certain()
        missing: list[str] = []
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


@dataclass
class Figures:
    rounds: int = 0
    unavailable: list[float] = field(default_factory=list)  # per round: fault -> every driver granted again
    lost: list[int] = field(default_factory=list)  # per round: drivers that found the map lost


def campaign(
    drivers: list[DriverProcess],
    url: str,
    fault: Callable[[int], Callable[[], None]],
    rounds: int,
) -> tuple[Ledger, Figures]:
    """``rounds`` rounds under load: the fault (``fault(n)`` makes it, and returns how to heal it after)."""
    ledger = Ledger()
    figures = Figures()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(n, driver, ledger, 7919 * n, stop), daemon=True)
        for n, driver in enumerate(drivers)
    ]
    for thread in threads:
        thread.start()
    try:
        for number in range(rounds):
            wait_until(lambda: len(ledger.granted_at) == len(drivers), timeout=30, what="every driver granting")
            time.sleep(0.3)  # claims made before the fault
            before = sum(lost_total(d) for d in drivers)
            with ledger.lock:
                ledger.round = f"round {number}"
            faulted = time.monotonic()
            heal = fault(number)

            def everyone_granted_again(since: float = faulted) -> bool:
                with ledger.lock:
                    return all(ledger.granted_at.get(n, 0.0) > since for n in range(len(drivers)))

            wait_until(
                everyone_granted_again, timeout=90, interval=0.02, what=f"every driver granting after round {number}"
            )
            figures.unavailable.append(time.monotonic() - faulted)
            heal()
            wait_until(lambda: everyone_ready(drivers), timeout=60, what=f"every driver ready after round {number}")
            figures.lost.append(sum(lost_total(d) for d in drivers) - before)
            figures.rounds += 1
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        ledger.missing += map_lacks(url, ledger)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return ledger, figures


def report(capsys: pytest.CaptureFixture[str], title: str, ledger: Ledger, figures: Figures) -> None:
    with capsys.disabled():
        print(f"\nfailover, {title}: {figures.rounds} rounds, {ledger.requests} requests, {ledger.refused} errors, "
              f"slowest error {ledger.slowest_error:.2f} s, longest unavailability {max(figures.unavailable):.2f} s, "
              f"duplicates {len(ledger.duplicates)}, maps found lost per round {figures.lost}")  # fmt: skip
        cells = [title, figures.rounds, ledger.requests, ledger.refused, f"{ledger.slowest_error:.2f} s",
                 f"{max(figures.unavailable):.1f} s", sum(1 for n in figures.lost if n),
                 len(ledger.duplicates)]  # fmt: skip
        print("| " + " | ".join(map(str, cells)) + " |")
        for text, count in ledger.errors.most_common(4):
            print(f"  {count} x {text}")
        for line in (ledger.duplicates + ledger.missing + ledger.raw_errors)[:10]:
            print(f"  ! {line}")


def check(ledger: Ledger) -> None:
    assert ledger.duplicates == [], ledger.duplicates
    assert ledger.missing == [], ledger.missing
    assert ledger.raw_errors == [], ledger.raw_errors[:5]
    assert ledger.slowest_error < SLOWEST_ERROR, f"a refusal took {ledger.slowest_error:.2f}s"


def sentinel_url(setup: SentinelSetup, query: str) -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in setup.sentinel_addresses)
    return f"redis+sentinel://{hosts}/{SERVICE}?{query}"


@on(REDIS)
def test_sentinel_failovers_with_durable_acks_lose_nothing(
    redis_family: ServerFamily, tmp_path: Path, running: list[DriverProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    family = redis_family
    family.require(family.sentinel)
    # Two replicas, so that claims are acknowledged again as soon as the other replica follows the new
    # primary. With wait_replicas=1 of 2, the sentinels (going by replication offsets up to a second
    # old) may promote the replica that lacks the last claims: the drivers then find the map lost and
    # rebuild it from their records (counted, not failed); nothing may be handed out twice or go missing.
    # wait_replicas=2 would rule that out, and pause every claim after a failover until the old primary
    # is back as a replica (the sentinels convert it about 10 s after it returns).
    with SentinelSetup(family, replicas=2) as setup:
        url = sentinel_url(setup, "prefix=durable&wait_replicas=1&wait_timeout=300ms")
        drivers = start_drivers(tmp_path / "durable", url, running)

        def fault(number: int) -> Callable[[], None]:
            old = setup.kill_primary()
            setup.wait_for_failover(old.address)
            return lambda: setup.bring_back(old)

        ledger, figures = campaign(drivers, url, fault, ROUNDS)
        report(capsys, f"Sentinel, {family.id}, kill -9 of the primary, wait_replicas=1 of 2", ledger, figures)
    check(ledger)


@on(VALKEY)
def test_sentinel_failovers_without_durable_acks_are_found_as_lost_maps(
    redis_family: ServerFamily, tmp_path: Path, running: list[DriverProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    family = redis_family
    family.require(family.sentinel)
    with SentinelSetup(family, replicas=1) as setup:
        url = sentinel_url(setup, "prefix=plain")
        drivers = start_drivers(tmp_path / "plain", url, running)

        def fault(number: int) -> Callable[[], None]:
            (replica,) = setup.replicas
            setup.pause_replication(replica)  # claims go on, acknowledged, and never reach it
            time.sleep(0.5)
            old = setup.kill_primary()
            setup.wait_for_failover(old.address)

            def heal() -> None:
                print(
                    "DEBUG",
                    setup.reported_primaries(),
                    [(n.name, n.running, n.info("replication") if n.running else None) for n in setup.data_nodes],
                )
                setup.resume_replication(replica)
                setup.bring_back(old)

            return heal

        ledger, figures = campaign(drivers, url, fault, LOSSY_ROUNDS)
        report(capsys, f"Sentinel, {family.id}, kill -9 after the replica's link was cut, no wait", ledger, figures)
    check(ledger)
    assert all(figures.lost), f"every round loses acknowledged claims, and every one must be found: {figures.lost}"


@on(VALKEY)
def test_cluster_failovers_with_durable_acks_lose_nothing(
    redis_family: ServerFamily, tmp_path: Path, running: list[DriverProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    family = redis_family
    family.require(family.cli)
    with ClusterSetup(family, replicas=1) as cluster:  # one replica: it has every acknowledged claim (see above)
        prefix = "cluster"
        slot = cluster.slot_of(f"{{{prefix}}}:settings")
        seed = next(node for node in cluster.cluster_nodes if node is not cluster.owner_of(slot))
        url = f"redis+cluster://{seed.name}?prefix={prefix}&wait_replicas=1&wait_timeout=300ms"
        drivers = start_drivers(tmp_path / "cluster", url, running)

        def fault(number: int) -> Callable[[], None]:
            kill = number % 2 == 1
            old, new = cluster.fail_over(slot, kill=kill)
            if kill:  # back at once, as a replica of the new owner: acknowledgements need it
                cluster.bring_back(old)
                cluster.wait_replicating(old, new)
            return lambda: None

        ledger, figures = campaign(drivers, url, fault, ROUNDS)
        report(capsys, f"Cluster, {family.id}, CLUSTER FAILOVER and kill -9 of the owner, wait_replicas=1",
               ledger, figures)  # fmt: skip
    check(ledger)
    assert figures.lost == [0] * figures.rounds, "with durable acks, no driver may find the map lost"
