"""The Redis store's usage counters agree with a full scan of the map, whatever happened to it.

The counters (``RedisStore.usage``) are what ``/metrics`` and ``mini-ipam ls --summary``
read, in one round trip; the scan (``take_inventory``) reads every block and pool. After
a random workload of opens, shares, claims, releases and closes, after calls whose reply
was lost (and were undone by the next call), after a caller killed in the middle of its
work, and after the map was flushed and rebuilt, both must give the same numbers.
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from mini_ipam.inventory import ParentView, take_inventory, take_summary
from mini_ipam.testing import wait_until
from stores import AnySubnet, ExactSubnet, Granted, Network, StoreUnavailable
from stores.redis import RedisStore
from tests.servers import RedisServer

PARENT4 = ipaddress.ip_network("10.40.0.0/16")
PARENT6 = ipaddress.ip_network("fd00:40::/48")
AROUND = ipaddress.ip_network("10.41.0.0/16")  # a parent that a block around it will hold whole
PARENTS: tuple[Network, ...] = (PARENT4, PARENT6, ipaddress.ip_network("10.41.8.0/24"))


@pytest.fixture(params=["fakeredis", "redis"])
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[], RedisStore]]:
    """Stores on one map: on fakeredis, or on the session's real server (one prefix per test)."""
    made: list[RedisStore] = []
    prefix = f"usage{os.getpid()}{id(request)}"
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def build() -> RedisStore:
            store = RedisStore(fakeredis.FakeRedis(server=server), prefix)
            made.append(store)
            return store
    else:
        real: RedisServer = request.getfixturevalue("redis_server")

        def build() -> RedisStore:
            store = RedisStore.from_url(f"{real.url}?prefix={prefix}")
            made.append(store)
            return store

    yield build
    for store in made:
        store.close()


def scanned(store: RedisStore) -> list[tuple[Any, ...]]:
    """Each parent's figures, from a full scan."""
    return [_figures(view) for view in _with_addresses(store)]


def counted(store: RedisStore) -> list[tuple[Any, ...]]:
    """Each parent's figures, from the counters."""
    summary = take_summary(store, PARENTS)
    assert all(view.free_blocks is None for view in summary.parents), "the summary scanned instead of counting"
    return [_figures(view) for view in summary.parents]


def _with_addresses(store: RedisStore) -> list[ParentView]:
    return take_inventory(store, PARENTS).parents


def _figures(view: ParentView) -> tuple[Any, ...]:
    return (
        view.parent,
        view.used_addresses,
        view.free_addresses,
        view.largest_free,
        dict(view.blocks_by_size),
        dict(view.addresses_by_size),
    )


class Workload:
    """Random opens (some shared, some exact), claims, releases and closes on one store."""

    def __init__(self, store: RedisStore, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.pools: list[tuple[Network, str]] = []
        self.addresses: list[tuple[Network, str, Any]] = []

    def step(self) -> None:
        rng, store = self.rng, self.store
        choice = rng.random()
        if choice < 0.3 or not self.pools:
            parent = rng.choice([PARENT4, PARENT4, PARENT6])
            size = rng.randint(24, 29) if parent.version == 4 else rng.randint(56, 64)
            scope = f"local:{rng.randrange(3)}"
            got = store.open_pool(AnySubnet((parent,), size), scope=scope, label="l", owner="h")
            if isinstance(got, Granted):
                self.pools.append((got.pool.subnet, scope))
        elif choice < 0.36:
            subnet, _ = rng.choice(self.pools)
            scope = f"share:{rng.randrange(1000)}"  # a second pool on the same block
            got = store.open_pool(ExactSubnet(subnet), scope=scope, label="l", owner="h", share_label="l")
            if isinstance(got, Granted):
                self.pools.append((got.pool.subnet, scope))
        elif choice < 0.75:
            subnet, scope = rng.choice(self.pools)
            found = store.claim_next_address(subnet, scope, subnet[1], subnet[-2], rng.random() < 0.5)
            if found is not None:
                self.addresses.append((subnet, scope, found))
        elif choice < 0.88 and self.addresses:
            subnet, scope, address = self.addresses.pop(rng.randrange(len(self.addresses)))
            store.release_address(subnet, scope, address)
        else:
            subnet, scope = self.pools.pop(rng.randrange(len(self.pools)))
            store.close_pool(subnet, scope)
            self.addresses = [a for a in self.addresses if (a[0], a[1]) != (subnet, scope)]


def test_the_counters_agree_with_a_scan_after_a_random_workload(make: Callable[[], RedisStore]) -> None:
    store = make()
    work = Workload(store, seed=7)
    for _ in range(150):
        work.step()  # claims made before anything counts: the first summary counts them
    assert counted(store) == scanned(store)
    for round_ in range(4):
        for _ in range(150):
            work.step()
        assert counted(store) == scanned(store), f"after round {round_}"
    assert sum(counted(store)[0][4].values()) > 5  # the workload did hold blocks in the first parent


def test_a_block_around_a_parent_counts_it_whole(make: Callable[[], RedisStore]) -> None:
    store = make()
    inner = PARENTS[2]
    assert counted(store)[2][1] == 0  # counted from now on, empty
    granted = store.open_pool(ExactSubnet(AROUND), scope="s", label="l", owner="h")
    assert isinstance(granted, Granted)
    assert counted(store)[2][1:4] == (inner.num_addresses, 0, None) == scanned(store)[2][1:4]
    assert store.close_pool(AROUND, "s") is not None
    assert counted(store) == scanned(store)
    assert counted(store)[2][3] == inner.prefixlen  # all of it free again


def test_calls_whose_reply_was_lost_and_were_undone_leave_the_counters_right(
    make: Callable[[], RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make()
    work = Workload(store, seed=11)
    for _ in range(60):
        work.step()
    counted(store)  # counting from here on
    real = store._script
    lost = [0]

    def run_then_lose_the_reply(*args: Any, **kwargs: Any) -> Any:
        reply = real(*args, **kwargs)
        if kwargs.get("args", [None])[0] in ("open_any", "claim_next") and work.rng.random() < 0.3:
            lost[0] += 1
            raise redis.ConnectionError("the reply was lost on its way back")
        return reply

    monkeypatch.setattr(store, "_script", run_then_lose_the_reply)
    for _ in range(200):
        try:
            work.step()
        except StoreUnavailable:
            pass  # the next call abandons it: undone, if it landed
    monkeypatch.setattr(store, "_script", real)
    store.ping()  # abandons what is still pending
    assert lost[0] > 5
    assert counted(store) == scanned(store)


WORKER = """
import sys, time
sys.path.insert(0, {root!r})
from stores.redis import RedisStore
from tests.test_usage import Workload
store = RedisStore.from_url({url!r})
work = Workload(store, seed=int(sys.argv[1]))
print("working", flush=True)
while True:
    work.step()
"""


@pytest.mark.redis
def test_a_caller_killed_in_the_middle_of_its_work_leaves_the_counters_right(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = f"{redis_server.url}?prefix=usagekill{os.getpid()}"
    store = RedisStore.from_url(url)
    try:
        counted(store)  # counting before the workers start
        root = str(Path(__file__).resolve().parent.parent)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER.format(root=root, url=url), str(seed)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2, 3)
        ]
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "working"
        wait_until(lambda: sum(counted(store)[0][4].values()) >= 20, timeout=30, what="the workers to hold blocks")
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            assert worker.stdout is not None
            worker.stdout.close()
        assert counted(store) == scanned(store)
    finally:
        store.close()


def test_a_flushed_map_counts_again_from_what_is_put_back(make: Callable[[], RedisStore]) -> None:
    store = make()
    work = Workload(store, seed=3)
    for _ in range(120):
        work.step()
    before = counted(store)
    held = [(pool, store.address_claims(pool.subnet, pool.scope)) for pool in store.pools()]
    store.client.flushall()
    status, made = store.recover(store.identity, window=0)
    assert made and status.identity is not None
    store.adopt(status.identity)
    assert counted(store)[0][1] == 0  # nothing there: counted afresh, not the old figures
    for pool, claims in held:
        store.restore(pool, claims, status.identity)
    assert counted(store) == scanned(store) == before
