"""Benchmark 9, latency against fill: RequestPool + ReleasePool per store, from an empty /14 to 98% full.

Six drivers side by side: for each store (``memory://``, ``file://`` in a temp directory, a redis-server
on a temporary Unix socket) one whose map is filled level by level, and one whose map stays empty (its
control; for Redis another key prefix on the same server), all with the /14 parent of
``flat_allocation.py`` (16,384 /28 slots). At each fill level the filled maps are first topped up through
their own sockets (4 client threads); then all six drivers are measured interleaved: ``--rounds`` rounds
of ``--pairs`` RequestPool + ReleasePool pairs from one keep-alive client.

The levels are measured one after another on a shared machine, where the CPU and the disk (which every
file-store change fdatasyncs) drift over a minute, so each level is judged against its own store's
empty control measured in the same rounds: figure = median over rounds of filled / empty, at 98% and at
the worst level (target <= 1.5, as in ``flat_allocation.py``).

The plot shows, per store, the median pair time with its interquartile band (and the empty control,
dashed) and the p99, against the fill level. Writes ``bench/latency_vs_fill.png`` (committed) and
``bench/results/latency_vs_fill.json``.

    python bench/latency_vs_fill.py [--rounds 9] [--pairs 40]
    python bench/latency_vs_fill.py --replot      # redraw the PNG from bench/results/latency_vs_fill.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import BENCH, RESULTS
from support.client import UnixClient, pool_pair, sized_pool
from support.maps import in_threads
from support.processes import RedisProcess, driver_process, temp_directory
from support.report import Report, code_state
from support.stats import flatten, interleave, median, p99, percentile, round_ratios

PARENT = "10.64.0.0/14"
SLOTS = 1 << (28 - 14)
LEVELS = (0, 10, 25, 50, 75, 90, 95, 98)
STORES = ("memory", "file", "redis")
EMPTY = " (empty)"
COLOURS = {"memory": "tab:blue", "file": "tab:orange", "redis": "tab:red"}
PLOT = BENCH / "latency_vs_fill.png"
FLAT = 1.5


def pair_batch(client: UnixClient, pairs: int) -> Callable[[], list[float]]:
    """RequestPool + ReleasePool pairs; seconds per pair."""
    clock = time.perf_counter

    def run() -> list[float]:
        samples = []
        for _ in range(pairs):
            started = clock()
            pool_pair(client)
            samples.append(clock() - started)
        return samples

    return run


def top_up(socket_path: Path, count: int) -> None:
    """Add ``count`` pools through the driver's socket, from 4 client threads."""
    if count <= 0:
        return

    def worker() -> Callable[[], object]:
        client = UnixClient(socket_path)
        return lambda: client.ok("IpamDriver.RequestPool", sized_pool())

    in_threads(worker, count)


def plot(table: dict[str, dict[int, dict[str, float]]], path: Path, subtitle: str) -> None:
    """Two panels against fill: the median with its interquartile band, and the p99 (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    figure, (typical, tail) = plt.subplots(1, 2, figsize=(12, 5.2), dpi=110)
    for store, rows in table.items():
        levels = sorted(rows)
        medians = [rows[x]["median_ms"] for x in levels]
        if store.endswith(EMPTY):
            colour = COLOURS[store.removesuffix(EMPTY)]
            label = f"{store.removesuffix(EMPTY)}, empty map (same rounds)"
            typical.plot(levels, medians, "--", color=colour, linewidth=1, alpha=0.8, label=label)
            continue
        colour = COLOURS[store]
        typical.plot(levels, medians, "o-", color=colour, linewidth=2, label=f"{store}, map filled to x%")
        low, high = [rows[x]["p25_ms"] for x in levels], [rows[x]["p75_ms"] for x in levels]
        typical.fill_between(levels, low, high, color=colour, alpha=0.15)
        tail.plot(levels, [rows[x]["p99_ms"] for x in levels], "s-", color=colour, linewidth=1.5, label=store)
    typical.set_title("typical: median (band: 25th to 75th percentile)")
    highest = max(row["p75_ms"] for rows in table.values() for row in rows.values())
    typical.set_ylim(0, highest * 1.6)
    tail.set_title("tail: 99th percentile (log scale)")
    tail.set_yscale("log")
    tail.yaxis.set_major_formatter(ScalarFormatter())
    tail.yaxis.set_minor_formatter(ScalarFormatter())
    for axes in (typical, tail):
        axes.set_xlabel("fill of the /14 parent (% of its 16,384 /28 slots held)")
        axes.set_ylabel("RequestPool + ReleasePool via the socket (ms)")
        axes.set_xlim(-2, 100)
        axes.set_xticks([level for level in LEVELS if level != 95])  # 95 and 98 would overlap
        axes.grid(True, which="both", alpha=0.3)
    typical.legend(loc="upper left", fontsize=8, ncol=2)
    tail.legend(loc="upper left", fontsize=8)
    figure.suptitle("mini-ipam: pool request latency against fill, per store", fontsize=13)
    figure.text(0.5, 0.01, subtitle, ha="center", fontsize=8, color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 0.97))
    figure.savefig(path)
    plt.close(figure)


def main() -> None:
    """Run the benchmark, write the JSON results and the plot."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the last results")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((RESULTS / "latency_vs_fill.json").read_text())["details"]
        rows = saved["per_pair_ms"].items()
        plot({name: {int(level): row for level, row in by.items()} for name, by in rows}, PLOT, saved["subtitle"])
        print(f"plot: {PLOT.relative_to(BENCH.parent)}")
        return
    report = Report("latency_vs_fill", "RequestPool+ReleasePool latency against fill, memory / file / redis stores")
    flags = ("--pool", PARENT, "--host-id", "bench", "--log-level", "warning")
    names = [name for store in STORES for name in (store, store + EMPTY)]
    table: dict[str, dict[int, dict[str, float]]] = {name: {} for name in names}
    ratios: dict[str, dict[int, float]] = {store: {} for store in STORES}
    with temp_directory("fill") as directory:
        redis = RedisProcess(directory).start()
        urls = {
            "memory": "memory://",
            "memory" + EMPTY: "memory://",
            "file": f"file://{directory}/filled.json",
            "file" + EMPTY: f"file://{directory}/empty.json",
            "redis": redis.store_url("filled"),
            "redis" + EMPTY: redis.store_url("empty"),
        }
        drivers = {
            name: driver_process(
                directory / f"driver{number}.sock", urls[name], *flags, log=directory / f"driver{number}.log"
            )
            for number, name in enumerate(names)
        }
        try:
            for driver in drivers.values():
                driver.start()
            clients = {name: UnixClient(driver.socket_path) for name, driver in drivers.items()}
            held = 0
            for level in LEVELS:
                target = round(SLOTS * level / 100)
                for store in STORES:
                    top_up(drivers[store].socket_path, target - held)
                held = target
                variants = {name: pair_batch(client, args.pairs) for name, client in clients.items()}
                for run in variants.values():
                    run()  # warm up
                samples = interleave(variants, args.rounds)
                for name, rounds in samples.items():
                    values = flatten(rounds)
                    table[name][level] = {
                        "median_ms": median(values) * 1e3,
                        "p25_ms": percentile(values, 25) * 1e3,
                        "p75_ms": percentile(values, 75) * 1e3,
                        "p99_ms": p99(values) * 1e3,
                        "held": held if not name.endswith(EMPTY) else 0,
                    }
                for store in STORES:
                    ratios[store][level] = median(round_ratios(samples[store], samples[store + EMPTY]))
                row = "  ".join(
                    f"{store} {table[store][level]['median_ms']:5.2f} ({ratios[store][level]:4.2f}x empty)"
                    for store in STORES
                )
                print(f"  {level:3d}% ({held:6,} held): median ms  {row}", flush=True)
        finally:
            for driver in drivers.values():
                driver.stop()
            redis.stop()

    code = code_state()
    subtitle = (
        f"{time.strftime('%Y-%m-%d')}, commit {code['commit']}{' (modified)' if code['modified'] else ''}; "
        f"{args.rounds} interleaved rounds x {args.pairs} pairs per point, one keep-alive client; "
        f"reproduce: python bench/latency_vs_fill.py"
    )
    plot(table, PLOT, subtitle)
    print(f"plot: {PLOT.relative_to(BENCH.parent)}")
    for store in STORES:
        at_full = ratios[store][98]
        report.add(f"latency vs fill, {store}: 98% / empty, same rounds", at_full, "x", f"<= {FLAT:g}", at_full <= FLAT)
        worst_level = max(ratios[store], key=lambda level: ratios[store][level])
        worst = ratios[store][worst_level]
        name = f"latency vs fill, {store}: worst level / empty, same rounds"
        report.add(name, worst, "x", f"<= {FLAT:g}", worst <= FLAT, f"at {worst_level}%")
    details: dict[str, Any] = {"parent": PARENT, "levels": LEVELS, "per_pair_ms": table, "plot": str(PLOT.name)}
    details["filled_over_empty"] = ratios
    details["subtitle"] = subtitle
    details.update(rounds=args.rounds, pairs=args.pairs)
    report.details = details
    report.save()


if __name__ == "__main__":
    main()
