"""SIGKILL at random moments under load, 50 times per store, restarting each time.

Four clients allocate and release pools and addresses (IPv4 and IPv6, dynamic
and explicit) while the driver is killed after a random number of acknowledged
calls plus a random delay. After every kill the state is read directly (the file
store must open; the Redis keys must agree with each other) and compared with a
ledger of what the clients were told:

* nothing acknowledged is lost: every acknowledged pool and address is there;
* nothing is duplicated: no two blocks overlap, no address is held twice, and no
  client was ever handed something another client holds;
* what the ledger does not know is explained by a call that got no answer: a
  release that may or may not have landed, or a request whose reply was cut off.

A release is taken out of the ledger *before* it is sent: once the driver has
freed it, another client may be handed the same subnet at once. After each check
the ledger is set to what was found, so every round starts with no uncertainty.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mini_ipam import protocol
from stores import Store
from tests.driver_process import DriverProcess, call
from tests.hardening.support import check_map, check_redis_keys
from tests.servers import RedisServer, wait_until

KILLS = 50
CLIENTS = 4
POOL = "10.80.0.0/16"
EXPLICIT = ipaddress.ip_network("10.90.0.0/20")  # explicit subnets, outside the parent
HOST = "crash"


@dataclass
class Ledger:
    """What the clients were told, and what they cannot know because the answer never came."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pools: dict[str, set[str]] = field(default_factory=dict)  # PoolID -> acknowledged addresses
    maybe_pools: dict[str, set[str]] = field(default_factory=dict)  # unanswered release (its addresses then)
    # Calls in flight behind each maybe_pools entry: once a release has landed, another client can be
    # given the same pool and release it too before the first answer comes back.
    maybe_calls: Counter[str] = field(default_factory=Counter)
    maybe_addresses: dict[str, set[str]] = field(default_factory=dict)  # PoolID -> unanswered address releases
    unknown_pools: int = 0  # unanswered dynamic RequestPool: some pool may have landed
    unknown_addresses: Counter[str] = field(default_factory=Counter)  # PoolID -> unanswered RequestAddress
    answered: int = 0
    errors: list[str] = field(default_factory=list)

    def maybe(self, pool_id: str, addresses: set[str]) -> None:
        """A call that may or may not change whether ``pool_id`` (with ``addresses``) exists is in flight."""
        self.maybe_pools[pool_id] = self.maybe_pools.get(pool_id, set()) | addresses
        self.maybe_calls[pool_id] += 1

    def answered_maybe(self, pool_id: str) -> None:
        """That call was answered: the entry goes with the last such call in flight."""
        self.maybe_calls[pool_id] -= 1
        if not self.maybe_calls[pool_id]:
            del self.maybe_calls[pool_id]
            del self.maybe_pools[pool_id]

    calls: Counter[str] = field(default_factory=Counter)


class Killed(Exception):
    """The driver went away mid-call."""


def post(socket_path: Path, method: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    try:
        return call(socket_path, method, body, timeout=10)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise Killed(method) from exc


def client_loop(socket_path: Path, ledger: Ledger, mine: list[str], rng: random.Random) -> None:
    """Random traffic until the driver disappears. ``mine`` are the PoolIDs this client owns."""
    try:
        while True:
            one_call(socket_path, ledger, mine, rng)
            with ledger.lock:
                ledger.answered += 1
    except Killed:
        return


def one_call(socket_path: Path, ledger: Ledger, mine: list[str], rng: random.Random) -> None:
    choice = rng.random()
    if mine and choice < 0.2:
        pool_id = mine.pop(rng.randrange(len(mine)))
        with ledger.lock:  # forget it before asking: once freed, another client may get it at once
            ledger.maybe(pool_id, ledger.pools.pop(pool_id))
        ledger.calls["ReleasePool"] += 1
        status, reply = post(socket_path, "IpamDriver.ReleasePool", protocol.release_pool(pool_id))
        with ledger.lock:
            ledger.answered_maybe(pool_id)
            if status != 200:
                ledger.errors.append(f"release of acknowledged pool {pool_id}: {status} {reply}")
        return
    if mine and choice < 0.35:
        pool_id = rng.choice(mine)
        with ledger.lock:
            held = sorted(ledger.pools[pool_id])
            if not held:
                return
            address = rng.choice(held)
            ledger.pools[pool_id].discard(address)
            ledger.maybe_addresses.setdefault(pool_id, set()).add(address)
        ledger.calls["ReleaseAddress"] += 1
        status, reply = post(socket_path, "IpamDriver.ReleaseAddress", protocol.release_address(pool_id, address))
        with ledger.lock:
            ledger.maybe_addresses[pool_id].discard(address)
            if status != 200:
                ledger.errors.append(f"release of acknowledged address {address} in {pool_id}: {status} {reply}")
        return
    if mine and choice < 0.65:
        pool_id = rng.choice(mine)
        options = {"RequestAddressType": "com.docker.network.gateway"} if rng.random() < 0.2 else {}
        if rng.random() < 0.2:
            options["com.docker.network.ipam.serial"] = "true"
        with ledger.lock:
            ledger.unknown_addresses[pool_id] += 1
        ledger.calls["RequestAddress"] += 1
        body = protocol.request_address(pool_id, "", options)
        status, reply = post(socket_path, "IpamDriver.RequestAddress", body)
        with ledger.lock:
            ledger.unknown_addresses[pool_id] -= 1
            if status == 200:
                address = str(reply["Address"]).split("/")[0]
                if address in ledger.pools[pool_id]:
                    ledger.errors.append(f"{address} in {pool_id} handed out twice")
                ledger.pools[pool_id].add(address)
            elif status != 409:  # a full pool is a fine answer
                ledger.errors.append(f"address in {pool_id}: {status} {reply}")
        return
    if choice < 0.85:
        v6 = rng.random() < 0.15
        size = str(rng.randint(62, 66)) if v6 else str(rng.randint(26, 30))
        options = {"size6" if v6 else "size": size}
        body = protocol.request_pool(options=options, v6=v6)
        with ledger.lock:
            ledger.unknown_pools += 1
        ledger.calls["RequestPool dynamic"] += 1
        status, reply = post(socket_path, "IpamDriver.RequestPool", body)
        with ledger.lock:
            ledger.unknown_pools -= 1
            if status != 200:
                ledger.errors.append(f"dynamic pool: {status} {reply}")
                return
            pool_id = str(reply["PoolID"])
            if pool_id in ledger.pools:
                ledger.errors.append(f"{pool_id} handed out twice")
            ledger.pools[pool_id] = set()
        mine.append(pool_id)
        return
    size = rng.randint(24, 28)
    offset = rng.randrange(EXPLICIT.num_addresses >> (32 - size)) << (32 - size)
    subnet = ipaddress.ip_network((int(EXPLICIT.network_address) + offset, size))
    pool_id = f"local/{subnet}"
    with ledger.lock:
        if pool_id in ledger.maybe_pools or pool_id in ledger.pools:
            return
        ledger.maybe(pool_id, set())
    ledger.calls["RequestPool explicit"] += 1
    status, reply = post(socket_path, "IpamDriver.RequestPool", protocol.request_pool(pool=str(subnet)))
    with ledger.lock:
        ledger.answered_maybe(pool_id)
        if status == 200:
            ledger.pools[pool_id] = set()
            mine.append(pool_id)
        elif status != 409:  # an overlap is a fine answer
            ledger.errors.append(f"explicit pool {subnet}: {status} {reply}")


def held_by_store(store: Store) -> dict[str, set[str]]:
    """The map as PoolIDs and addresses, after checking it is sound."""
    held = check_map(store)
    assert all(scope == f"local@{HOST}" for _, scope in held), sorted(held)
    return {f"local/{cidr}": set(addresses) for (cidr, _), addresses in held.items()}


def reconcile(ledger: Ledger, held: dict[str, set[str]]) -> dict[str, int]:
    """Check what was found against the ledger; then make the ledger exactly that. Returns what was explained."""
    with ledger.lock:
        lost = sorted(set(ledger.pools) - set(held))
        assert not lost, f"acknowledged pools lost: {lost[:5]}"
        extra_pools = set(held) - set(ledger.pools)
        unexplained = extra_pools - set(ledger.maybe_pools)
        assert len(unexplained) <= ledger.unknown_pools, (
            f"{len(unexplained)} pools nobody was told about, but only {ledger.unknown_pools} requests went unanswered:"
            f" {sorted(unexplained)[:5]}"
        )
        for pool_id in unexplained:
            assert held[pool_id] == set(), f"{pool_id}, unknown to every client, holds addresses {held[pool_id]}"
        for pool_id in extra_pools - unexplained:
            assert held[pool_id] <= ledger.maybe_pools[pool_id], (pool_id, held[pool_id])
        landed_addresses = 0
        for pool_id, acknowledged in ledger.pools.items():
            missing = acknowledged - held[pool_id]
            assert not missing, f"acknowledged addresses of {pool_id} lost: {sorted(missing)}"
            surplus = held[pool_id] - acknowledged - ledger.maybe_addresses.get(pool_id, set())
            assert len(surplus) <= ledger.unknown_addresses[pool_id], (
                f"{pool_id} holds {sorted(surplus)} that no unanswered request explains"
            )
            landed_addresses += len(surplus)
        explained = {
            "unanswered pool requests": ledger.unknown_pools,
            "unanswered pool requests that landed": len(unexplained),
            "unanswered releases": len(ledger.maybe_pools) + sum(map(len, ledger.maybe_addresses.values())),
            "unanswered address requests": sum(ledger.unknown_addresses.values()),
            "unanswered address requests that landed": landed_addresses,
        }
        # From now on the ledger is what is durably there: the next round starts with no uncertainty.
        ledger.pools = {pool_id: set(addresses) for pool_id, addresses in held.items()}
        ledger.maybe_pools.clear()
        ledger.maybe_calls.clear()
        ledger.maybe_addresses.clear()
        ledger.unknown_pools = 0
        ledger.unknown_addresses.clear()
        return explained


def kill_loop(
    make_driver: Callable[[], DriverProcess], read_state: Callable[[], dict[str, set[str]]], seed: int
) -> str:
    ledger = Ledger()
    rng = random.Random(seed)
    totals: Counter[str] = Counter()
    mid_call = 0
    for round_number in range(KILLS):
        driver = make_driver()
        owners: list[list[str]] = [[] for _ in range(CLIENTS)]
        for i, pool_id in enumerate(sorted(ledger.pools)):
            owners[i % CLIENTS].append(pool_id)
        threads = [
            threading.Thread(target=client_loop, args=(driver.socket_path, ledger, mine, random.Random(rng.random())))
            for mine in owners
        ]
        target = ledger.answered + rng.randint(1, 40)
        try:
            driver.start()
            for thread in threads:
                thread.start()
            wait_until(lambda: ledger.answered >= target or ledger.errors, timeout=60, what="client traffic")  # noqa: B023
            time.sleep(rng.uniform(0, 0.03))
        finally:
            if driver.process is not None and driver.process.poll() is None:
                driver.kill()
        for thread in threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), "a client hung after the kill"
        assert ledger.errors == [], f"round {round_number}: {ledger.errors[:5]}"
        explained = reconcile(ledger, read_state())
        totals.update(explained)
        in_flight = ("unanswered pool requests", "unanswered releases", "unanswered address requests")
        mid_call += 1 if any(explained[name] for name in in_flight) else 0
    assert len(ledger.pools) > 20, "too little traffic to mean anything"
    assert mid_call >= KILLS // 4, f"only {mid_call} of {KILLS} kills landed while a request was in flight"
    return (
        f"{KILLS} kills, {ledger.answered} answered calls (sent: {dict(ledger.calls)}), {len(ledger.pools)} pools "
        f"held at the end; kills with a request in flight: {mid_call}; cut-off outcomes: {dict(totals)}"
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_file_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stores.file import FileStore

    state = tmp_path / "state.json"
    flags = ("--store", f"file://{state}", "--pool", POOL, "--host-id", HOST, "--log-level", "warning")

    def make_driver() -> DriverProcess:
        return DriverProcess(tmp_path / "mini.sock", *flags)

    def read_state() -> dict[str, set[str]]:
        store = FileStore(state)  # a torn or unreadable state file raises CorruptState here
        try:
            return held_by_store(store)
        finally:
            store.close()

    summary = kill_loop(make_driver, read_state, seed=int(os.environ.get("CRASH_SEED", "8")))
    generations = sorted(p.name for p in tmp_path.glob("state.json*"))
    with capsys.disabled():
        print(f"\ncrash safety[file]: {summary}; files at the end: {generations}")


@pytest.mark.slow
@pytest.mark.redis
def test_sigkill_at_random_moments_redis_store(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from stores import from_url

    prefix = f"crash{os.getpid()}"
    url = f"{redis_server.url}?prefix={prefix}"
    flags = ("--store", url, "--pool", POOL, "--host-id", HOST, "--log-level", "warning", "--store-timeout", "5")
    client = redis_server.client()

    def make_driver() -> DriverProcess:
        return DriverProcess(tmp_path / "mini.sock", *flags)

    def read_state() -> dict[str, set[str]]:
        raw = check_redis_keys(client, prefix)  # no half-claims in the keys themselves
        store = from_url(url)
        try:
            held = held_by_store(store)
        finally:
            store.close()
        assert {f"local/{cidr}": addresses for (cidr, _), addresses in raw.items()} == held
        return held

    try:
        summary = kill_loop(make_driver, read_state, seed=int(os.environ.get("CRASH_SEED", "8")))
    finally:
        keys = list(client.scan_iter(match="{" + prefix + "}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    with capsys.disabled():
        print(f"\ncrash safety[redis]: {summary}")


def test_the_ledger_catches_a_lost_pool_and_an_unexplained_one() -> None:
    """The checker itself: it must fail when an acknowledged pool is gone, or a pool appears from nowhere."""
    ledger = Ledger(pools={"local/10.80.0.0/28": {"10.80.0.1"}})
    with pytest.raises(AssertionError, match="lost"):
        reconcile(ledger, {})
    ledger = Ledger(pools={"local/10.80.0.0/28": set()})
    with pytest.raises(AssertionError, match="nobody was told about"):
        reconcile(ledger, {"local/10.80.0.0/28": set(), "local/10.80.0.16/28": set()})
    ledger = Ledger(pools={"local/10.80.0.0/28": set()}, unknown_pools=1)
    reconcile(ledger, {"local/10.80.0.0/28": set(), "local/10.80.0.16/28": set()})
    assert ledger.pools == {"local/10.80.0.0/28": set(), "local/10.80.0.16/28": set()} and ledger.unknown_pools == 0
    ledger = Ledger(pools={"local/10.80.0.0/28": {"10.80.0.1"}})
    with pytest.raises(AssertionError, match="lost"):
        reconcile(ledger, {"local/10.80.0.0/28": set()})
    with pytest.raises(AssertionError, match="no unanswered request explains"):
        reconcile(Ledger(pools={"local/10.80.0.0/28": set()}), {"local/10.80.0.0/28": {"10.80.0.2"}})
