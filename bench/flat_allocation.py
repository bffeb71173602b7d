"""Benchmark 2, flat allocation: RequestPool + ReleasePool of a /28 in a /14 parent at 98% fill vs empty.

The /14 holds 16,384 /28 slots. Three maps per store:

* ``empty``;
* ``98% low``: the lowest 16,056 slots held, so the free ones are all at the top (a linear scan's worst case);
* ``98% holes``: every slot claimed, then a random 2% (328, fixed seed) released again: scattered holes.

Measured two ways, interleaved round by round in one run:

* in-process: an ``Allocator`` over a ``MemoryStore`` and over a ``RedisStore`` (a real redis-server on a
  temporary Unix socket; one key prefix per map), so only the allocator and the store are timed;
* via the socket: a ``mini-ipam serve`` process per map and store: memory maps filled through the
  socket; file maps (the durable store, journal + fdatasync) written at once as a state file
  (``support.maps.build_state_file``, the same shapes) and loaded by the driver; Redis maps filled in-process
  under the driver's host id and then served by the driver from Redis.

Figure: median over rounds of (median pair time at 98%) / (median pair time empty). Target <= 1.5.

    python bench/flat_allocation.py [--rounds 21] [--pairs 60]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.client import UnixClient, pool_pair, sized_pool
from support.maps import allocator_for, build_state_file, in_threads
from support.processes import RedisProcess, driver_process, temp_directory
from support.report import Report
from support.stats import describe, flatten, interleave, median

from mini_ipam.testing import DriverProcess

PARENT = "10.64.0.0/14"
SIZE = 28
SLOTS = 1 << (SIZE - 14)  # 16,384
HELD = SLOTS - round(SLOTS * 0.02)  # 16,056: 98.0% full
TARGET = 1.5
HOST = "bench"
MAPS = ("empty", "98% low", "98% holes")


def fill_map(allocator: Any, shape: str, seed: int = 6) -> None:
    """Bring an empty map to ``shape`` through an in-process Allocator (4 threads: the store is thread-safe)."""
    from mini_ipam.allocator import PoolRequest

    if shape == "empty":
        return
    request = PoolRequest(space="local", size=SIZE)
    count = HELD if shape == "98% low" else SLOTS
    pool_ids = in_threads(lambda: lambda: allocator.request_pool(request).pool_id, count)
    if shape == "98% holes":
        for pool_id in random.Random(seed).sample(sorted(pool_ids, key=str), SLOTS - HELD):
            allocator.release_pool(pool_id)


def fill_via_socket(socket_path: Path, shape: str, seed: int = 6) -> None:
    """The same shapes, made through a driver's socket (4 client threads, a connection each)."""
    if shape == "empty":
        return
    body = sized_pool(SIZE)

    def worker() -> Callable[[], str]:
        client = UnixClient(socket_path)
        return lambda: str(client.ok("IpamDriver.RequestPool", body)["PoolID"])

    pool_ids = in_threads(worker, HELD if shape == "98% low" else SLOTS)
    if shape == "98% holes":
        client = UnixClient(socket_path)
        for pool_id in random.Random(seed).sample(sorted(pool_ids), SLOTS - HELD):
            client.ok("IpamDriver.ReleasePool", {"PoolID": pool_id})
        client.close()


def in_process_batch(allocator: Any, pairs: int) -> Callable[[], list[float]]:
    """RequestPool + ReleasePool through the Allocator; seconds per pair."""
    from mini_ipam.allocator import PoolRequest

    request = PoolRequest(space="local", size=SIZE)
    clock = time.perf_counter

    def run() -> list[float]:
        samples = []
        for _ in range(pairs):
            started = clock()
            allocator.release_pool(allocator.request_pool(request).pool_id)
            samples.append(clock() - started)
        return samples

    return run


def socket_batch(client: UnixClient, pairs: int) -> Callable[[], list[float]]:
    """RequestPool + ReleasePool through a driver's socket; seconds per pair."""
    clock = time.perf_counter

    def run() -> list[float]:
        samples = []
        for _ in range(pairs):
            started = clock()
            pool_pair(client, SIZE)
            samples.append(clock() - started)
        return samples

    return run


def main() -> None:
    """Run the benchmark and write bench/results/flat_allocation.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--pairs", type=int, default=60)
    args = parser.parse_args()
    from stores.memory import MemoryStore
    from stores.redis import RedisStore

    report = Report("flat_allocation", "RequestPool+ReleasePool of a /28 in a /14 at 98% fill vs empty")
    fill_seconds: dict[str, float] = {}
    with temp_directory("flat") as directory:
        redis = RedisProcess(directory).start()
        drivers: list[DriverProcess] = []
        try:
            variants: dict[str, Callable[[], list[float]]] = {}
            for index, shape in enumerate(MAPS):
                started = time.perf_counter()
                memory = allocator_for(MemoryStore(), PARENT, HOST, SIZE)
                fill_map(memory, shape)
                variants[f"in-process/memory/{shape}"] = in_process_batch(memory, args.pairs)
                prefix = f"flat{index}"
                shared = allocator_for(RedisStore.from_url(redis.store_url(prefix)), PARENT, HOST, SIZE)
                fill_map(shared, shape)
                variants[f"in-process/redis/{shape}"] = in_process_batch(shared, args.pairs)
                state = directory / f"{prefix}.json"
                if shape != "empty":  # the file store's map is written at once, as the memory one is filled
                    holes = SLOTS - HELD if shape == "98% holes" else 0
                    build_state_file(state, HELD, PARENT, HOST, holes=holes, verify=False)
                file_url = f"file://{state}"
                for store, url in (("memory", "memory://"), ("file", file_url), ("redis", redis.store_url(prefix))):
                    name = f"{store}{index}"
                    driver = driver_process(
                        directory / f"{name}.sock",
                        url,
                        "--pool",
                        PARENT,
                        "--default-size",
                        str(SIZE),
                        "--host-id",
                        HOST,
                        "--host-ttl",
                        "3600",
                        "--recovery-window",  # a map made for the benchmark has no members to wait for
                        "0s",
                        "--log-level",
                        "warning",
                        log=directory / f"{name}.log",
                    ).start()
                    drivers.append(driver)
                    if store == "memory":
                        fill_via_socket(driver.socket_path, shape)
                    variants[f"socket/{store}/{shape}"] = socket_batch(UnixClient(driver.socket_path), args.pairs)
                fill_seconds[shape] = round(time.perf_counter() - started, 1)
                print(f"filled the {shape!r} maps in {fill_seconds[shape]} s", flush=True)
            for run in variants.values():
                run()  # warm up
            samples = interleave(variants, args.rounds)
        finally:
            for driver in drivers:
                driver.stop()
            redis.stop()

    print(f"per RequestPool+ReleasePool pair, median of {args.rounds} interleaved rounds of {args.pairs}:")
    for name, rounds in samples.items():
        print(f"  {name:<32} {median(flatten(rounds)) * 1e3:8.3f} ms")
    report.details = {
        "parent": PARENT,
        "size": SIZE,
        "slots": SLOTS,
        "held_at_98": HELD,
        "rounds": args.rounds,
        "pairs_per_round": args.pairs,
        "fill_seconds": fill_seconds,
        "per_pair": {name: describe(flatten(rounds)) for name, rounds in samples.items()},
    }
    for path, kinds in (("in-process", ("memory", "redis")), ("socket", ("memory", "file", "redis"))):
        for store in kinds:
            for shape in MAPS[1:]:
                report.ratio(
                    f"flat allocation {path}/{store}: {shape} / empty",
                    samples[f"{path}/{store}/{shape}"],
                    samples[f"{path}/{store}/empty"],
                    TARGET,
                )
    report.save()


if __name__ == "__main__":
    main()
