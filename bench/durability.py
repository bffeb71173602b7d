"""Benchmark 4, durability: what a journalled (fdatasync-ed) change costs, and that it does not grow.

Part A, through the socket, interleaved in one run: a memory-store driver holding 10,000 pools (filled
through its socket) and file-store drivers holding 1,000, 10,000 and 50,000 live pools (state files
written at once by ``support.maps.build_state_file``, then loaded by the driver at start-up). Two kinds of
change, each a pair of requests: RequestPool + ReleasePool of a /28, and RequestAddress + ReleaseAddress
in a /24 pool. A ninth variant, in the same rounds, appends a journal-sized line to a file in the state
files' directory and fdatasyncs it, twice (a change journals two events): the disk's own share.
Figures: file / memory by the median and by the mean of each round (the mean carries any compaction that
fell in the round), 50,000 / 1,000 live pools, and (file - memory) / (2 fdatasyncs), all per round.

Part B, in-process, around one compaction at each size: a ``FileStore`` opened on a state file whose
journal (``state.json.0.log``) already holds all but the last 300 pairs' worth of events before the
compaction rule (more than max(1024, 2 x live) journalled events) fires; then 600 pool pairs through an
Allocator. So compaction comes every max(1024, 2 x live) / 2 changes. The change that starts it copies the
state under the store's lock and switches the journal; a thread then writes the snapshot while later
changes go on. The figures: where it fell, the starting change's stall (its time above the typical
change), the changes made while the snapshot was written (their slowest, and their time above typical in
all), and the amortised share of a change of both.

Target: a change through the file store <= 2x the memory store's, flat from 1,000 to 50,000 pools.

    python bench/durability.py [--rounds 25] [--pairs 60]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.client import UnixClient, address_pair, pool_pair, sized_pool
from support.maps import allocator_for, build_state_file, driver_holds, in_threads
from support.processes import driver_process, temp_directory
from support.report import Report
from support.stats import describe, flatten, interleave, mean, median, ms, p99

from mini_ipam.testing import DriverProcess

PARENT = "10.0.0.0/12"  # 65,536 /28 slots
HOST = "bench"
SIZES = (1_000, 10_000, 50_000)
MEMORY_SIZE = 10_000
TARGET = 2.0
GROWTH = 1.25
BEFORE_COMPACTION = 300
JOURNAL_LINE = 180  # bytes: a journalled open event is about this long


def generation(state: Path) -> int:
    """The journal generation of a file store: G in ``state.json.G.log``."""
    pattern = re.compile(re.escape(state.name) + r"\.(\d+)\.log$")
    found = [int(m.group(1)) for name in os.listdir(state.parent) if (m := pattern.match(name))]
    return max(found, default=0)


def pair_batch(change: Callable[[], object], pairs: int) -> Callable[[], list[float]]:
    """A batch of ``pairs`` changes; seconds per change."""
    clock = time.perf_counter

    def run() -> list[float]:
        samples = []
        for _ in range(pairs):
            started = clock()
            change()
            samples.append(clock() - started)
        return samples

    return run


def watch_compactions(run: Callable[[], list[float]], state: Path, seen: list[int]) -> Callable[[], list[float]]:
    """Wrap a batch so that every compaction it causes is counted in ``seen``."""

    def watched() -> list[float]:
        before = generation(state)
        samples = run()
        seen.append(generation(state) - before)
        return samples

    return watched


def fdatasync_probe(directory: Path) -> Callable[[], None]:
    """Two journal-sized appends, each followed by fdatasync, as a file-store change makes them."""
    fd = os.open(directory / "fdatasync-probe.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b"x" * (JOURNAL_LINE - 1) + b"\n"

    def probe() -> None:
        for _ in range(2):
            os.write(fd, line)
            os.fdatasync(fd)

    return probe


def around_compaction(directory: Path, pools: int) -> dict[str, Any]:
    """Part B: 2 x BEFORE_COMPACTION pool pairs through a FileStore whose compaction is due half-way."""
    from mini_ipam.allocator import PoolRequest
    from stores.file import MIN_COMPACT_EVENTS, FileStore

    threshold = max(MIN_COMPACT_EVENTS, 2 * pools)  # compaction after more journalled events than this
    state = directory / f"b{pools}" / "state.json"
    state.parent.mkdir()
    build_state_file(state, pools, PARENT, HOST, journal_pairs=threshold // 2 - BEFORE_COMPACTION, verify=False)
    store = FileStore(state)
    allocator = allocator_for(store, PARENT, HOST)
    request = PoolRequest(space="local", size=28)
    clock = time.perf_counter
    samples: list[float] = []
    compacted_at: list[int] = []
    writing: list[int] = []  # changes that ended while a snapshot was being written
    try:
        for number in range(2 * BEFORE_COMPACTION):
            before = generation(state)
            started = clock()
            allocator.release_pool(allocator.request_pool(request).pool_id)
            samples.append(clock() - started)
            if generation(state) != before:
                compacted_at.append(number + 1)
            if store._compactor is not None and store._compactor.is_alive():
                writing.append(number)
    finally:
        store.close()
    typical = median(samples)
    stalls = [samples[at - 1] - typical for at in compacted_at]
    during = [samples[number] for number in writing if number + 1 not in compacted_at]
    spread = sum(max(0.0, sample - typical) for sample in during)
    interval = threshold // 2 + 1  # changes (two events each) from one compaction to the next
    return {
        "live_pools": pools,
        "changes_between_compactions": interval,
        "compacted_at_change": compacted_at,
        "expected_at_change": BEFORE_COMPACTION + 1,
        "compaction_ms": [ms(stall) for stall in stalls],
        "changes_while_writing": len(during),
        "slowest_while_writing_ms": ms(max(during, default=0.0)),
        "extra_while_writing_ms": ms(spread),
        "per_change": describe(samples),
        "amortised_compaction_ms_per_change": ms((sum(stalls) + spread) / interval),
    }


def main() -> None:
    """Run the benchmark and write bench/results/durability.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--pairs", type=int, default=60)
    args = parser.parse_args()
    report = Report("durability", "file store (journal + fdatasync) vs memory store, 1k/10k/50k live pools")
    flags = ("--pool", PARENT, "--host-id", HOST, "--log-level", "warning")
    with temp_directory("durable") as directory:
        states: dict[int, Path] = {}
        for pools in SIZES:
            (directory / f"f{pools}").mkdir()
            states[pools] = directory / f"f{pools}" / "state.json"
            seconds = build_state_file(states[pools], pools, PARENT, HOST, verify=False)
            print(f"state file with {pools:,} pools written in {seconds:.1f} s", flush=True)
        drivers: list[DriverProcess] = []
        compactions: dict[str, list[int]] = {}
        try:
            memory = driver_process(
                directory / "memory.sock", "memory://", *flags, log=directory / "memory.log"
            ).start()
            drivers.append(memory)

            def filler() -> Callable[[], object]:
                client = UnixClient(memory.socket_path)
                return lambda: client.ok("IpamDriver.RequestPool", sized_pool())

            in_threads(filler, MEMORY_SIZE)
            sockets = {"memory": memory.socket_path}
            for pools in SIZES:
                log = directory / f"f{pools}.log"
                driver = driver_process(
                    directory / f"file{pools}.sock", f"file://{states[pools]}", *flags, log=log
                ).start()
                drivers.append(driver)
                driver_holds(driver.socket_path, pools, PARENT)
                sockets[f"file {pools:,}"] = driver.socket_path
            variants: dict[str, Callable[[], list[float]]] = {}
            for name, path in sockets.items():
                client = UnixClient(path)
                pool_id = client.ok("IpamDriver.RequestPool", sized_pool(24))["PoolID"]
                for kind, change in (
                    ("pool", lambda c=client: pool_pair(c)),
                    ("address", lambda c=client, p=pool_id: address_pair(c, p)),
                ):
                    batch = pair_batch(change, args.pairs)
                    if name != "memory":
                        pools = int(name.split()[1].replace(",", ""))
                        seen = compactions.setdefault(f"{name}/{kind}", [])
                        batch = watch_compactions(batch, states[pools], seen)
                    variants[f"{name}/{kind}"] = batch
            variants["2 fdatasyncs"] = pair_batch(fdatasync_probe(states[SIZES[1]].parent), args.pairs)
            for run in variants.values():
                run()  # warm up
            for seen in compactions.values():
                seen.clear()
            samples = interleave(variants, args.rounds)
        finally:
            for driver in drivers:
                driver.stop()
        print("part B: around one compaction, in-process, at each size ...", flush=True)
        intervals = {pools: around_compaction(directory, pools) for pools in SIZES}

    print(f"per change (a pair of requests), {args.rounds} interleaved rounds of {args.pairs}:")
    print(f"  {'variant':<22}{'median':>10}{'mean':>10}{'p99':>10}{'max':>10}  compactions")
    for name, rounds in samples.items():
        d = describe(flatten(rounds))
        seen_text = str(sum(compactions[name])) if name in compactions else "-"
        row = f"{d['median_ms']:10.3f}{d['mean_ms']:10.3f}{d['p99_ms']:10.3f}{d['max_ms']:10.3f}"
        print(f"  {name:<22}{row}  {seen_text}")
    for kind in ("pool", "address"):
        what = f"durability {'RequestPool+ReleasePool' if kind == 'pool' else 'RequestAddress+ReleaseAddress'}"
        for pools in SIZES:
            numerator, denominator = samples[f"file {pools:,}/{kind}"], samples[f"memory/{kind}"]
            report.ratio(f"{what}: file {pools:,} pools / memory (median)", numerator, denominator, TARGET)
            report.ratio(f"{what}: file {pools:,} pools / memory (mean)", numerator, denominator, TARGET, mean)
    for kind in ("pool", "address"):
        first, last = samples[f"file {SIZES[0]:,}/{kind}"], samples[f"file {SIZES[-1]:,}/{kind}"]
        name = f"durability growth ({kind} change): file 50,000 / file 1,000 (mean)"
        report.ratio(name, last, first, GROWTH, mean, "flat = 1; the limit allows for noise")
    sync = samples["2 fdatasyncs"]
    for kind in ("pool", "address"):
        file_rounds, memory_rounds = samples[f"file {SIZES[1]:,}/{kind}"], samples[f"memory/{kind}"]
        shares = [(median(f) - median(m)) / median(s) for f, m, s in zip(file_rounds, memory_rounds, sync, strict=True)]
        report.add(
            f"durability ({kind} change, 10,000 pools): (file - memory) / 2 fdatasyncs",
            median(shares),
            note="same rounds; 1 = the file store's extra cost is its two fdatasyncs",
        )
    print("part B, in-process FileStore, pool pairs around one compaction:")
    for pools, result in intervals.items():
        d = result["per_change"]
        print(
            f"  {pools:>6,} live: a compaction every {result['changes_between_compactions']:,} changes, "
            f"seen at change {result['compacted_at_change']} (expected {result['expected_at_change']}), "
            f"stall {result['compaction_ms']} ms; {result['changes_while_writing']} changes while the snapshot was "
            f"written, slowest {result['slowest_while_writing_ms']:.1f} ms, "
            f"{result['extra_while_writing_ms']:.0f} ms above typical in all; per change median "
            f"{d['median_ms']:.3f} ms, p99 {d['p99_ms']:.3f}, max {d['max_ms']:.1f}; "
            f"amortised {result['amortised_compaction_ms_per_change']:.4f} ms per change"
        )
    for pools, result in intervals.items():
        amortised = result["amortised_compaction_ms_per_change"] / result["per_change"]["median_ms"]
        report.add(
            f"durability {pools:,} live: amortised compaction / typical change (in-process)",
            amortised,
            note=f"one compaction every {result['changes_between_compactions']:,} changes",
        )
        report.add(
            f"durability {pools:,} live: stall of the change that starts a compaction (in-process)",
            max(result["compaction_ms"], default=0.0),
            "ms",
            note=f"slowest change while the snapshot was written: {result['slowest_while_writing_ms']:.1f} ms",
        )
    all_sync = [value / 2 for value in flatten(sync)]
    report.add("fdatasync of a journal line on this disk, median (same rounds)", median(all_sync) * 1e3, "ms")
    report.add("fdatasync of a journal line on this disk, p99 (same rounds)", p99(all_sync) * 1e3, "ms")
    report.details = {
        "rounds": args.rounds,
        "pairs_per_round": args.pairs,
        "per_change_via_socket": {name: describe(flatten(rounds)) for name, rounds in samples.items()},
        "compactions_seen_via_socket": {name: sum(seen) for name, seen in compactions.items()},
        "around_compaction_in_process": intervals,
        "mean_round_ratio_note": "mean-based ratios carry the compactions that fell into a round",
    }
    report.save()


if __name__ == "__main__":
    main()
