"""Benchmark 11, observability at fleet scale: ``/metrics``, ``/healthz`` and ``mini-ipam ls`` against map size.

One redis-server on a temporary Unix socket and one map, filled through the store (``Allocator`` over
``RedisStore``, several processes, no HTTP) to each of ``--sizes`` (default 1,000, 10,000 and 100,000
networks, each a /28 with its gateway and two container addresses). At each size a fresh
``mini-ipam serve`` (``--host-ttl 3600``: no heartbeat during the measurement) serves that map, and:

* ``GET /metrics``, first scrape: the driver has never read the map, so no cache can answer;
* ``GET /metrics``, steady state: later scrapes that read the map again. The driver caches its map
  gauges for a while (``mini_ipam/metrics.py``: 10 s) and says when it read them
  (``mini_ipam_map_read_timestamp_seconds``); scrapes are sent every ``--interval`` seconds until
  ``--scrapes`` of them carried a new read time (a scrape with an unchanged one was answered from the
  cache, and is reported apart). A driver whose metrics carry no read time counts every scrape as a
  read;
* ``GET /healthz``, ``--health`` times;
* ``mini-ipam ls --summary`` when the command has that flag, else ``mini-ipam ls`` (every pool), as
  an operator runs it (a new process reading Redis directly); its time less that of the same command
  on an empty map of the same server is its work on the map.

Each is timed by the client and costs counted by the server (``INFO commandstats`` before and after):
every command, the script calls among them, and their Redis time. Targets (issue 16): a scrape under
50 ms at every size, and 100k / 1k <= 1.5 (flat). Today the map gauges come from a full listing, so
they grow with the map; the benchmark measures whatever the driver does.

    python bench/scrape_cost.py [--sizes 1000,10000,100000] [--scrapes 3] [--health 20]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import REPO
from support import redis_accounts as accounts
from support.processes import RedisProcess, driver_process, temp_directory
from support.report import Report
from support.stats import median

from mini_ipam.unix_http import UnixHTTPConnection

PREFIX = "scrape"
EMPTY_PREFIX = "scrape-empty"
HOST = "scrape"
OBSERVER = "observer"
"""The driver's host id: not the filler's, whose pools a driver with an empty local record would drop as released."""
SIZE = 28
SCRAPE_MS = 50.0
FLAT = 1.5
READ_AT = re.compile(rb"^mini_ipam_map_read_timestamp_seconds (\S+)$", re.MULTILINE)
"""The driver's own note of when its map gauges were read (absent: every scrape reads)."""


def get(socket_path: Path, path: str, timeout: float = 600.0) -> tuple[int, bytes, float]:
    """One GET on a new connection, as a scraper sends it; status, body and seconds taken."""
    connection = UnixHTTPConnection(str(socket_path), timeout)
    try:
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - started
    finally:
        connection.close()


def costed(client: Any, action: Any) -> tuple[Any, dict[str, accounts.Cost]]:
    """Run ``action``; return its result and what Redis ran meanwhile (``INFO commandstats`` delta)."""
    before = accounts.commandstats(client)
    result = action()
    return result, accounts.difference(before, accounts.commandstats(client))


def row(seconds: float, costs: dict[str, accounts.Cost], times: int = 1, **extra: Any) -> dict[str, Any]:
    """One measured thing: ms, and Redis commands, script calls and script time, per time."""
    script = accounts.scripts(costs)
    return {
        "ms": seconds * 1e3,
        "commands": accounts.total_commands(costs) / times,
        "script_calls": script.calls / times,
        "redis_ms": script.usec / times / 1e3,
        "commandstats": accounts.summary(costs, times),
        **extra,
    }


def read_time(body: bytes) -> float | None:
    """When the driver read the map gauges of this scrape; None when it does not say."""
    match = READ_AT.search(body)
    return float(match[1]) if match else None


def scrapes(client: Any, socket_path: Path, wanted: int, interval: float, budget: float) -> dict[str, Any]:
    """The first scrape, then scrapes every ``interval`` s until ``wanted`` read the map again, none starting
    ``budget`` s after the first did (a map whose every read takes minutes gets fewer)."""
    deadline = time.monotonic() + budget
    (status, body, seconds), costs = costed(client, lambda: get(socket_path, "/metrics"))
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}: {body[:300]!r}")
    first = row(seconds, costs, bytes=len(body), series=body.count(b"\n"))
    last_read = read_time(body)
    fresh: list[dict[str, Any]] = []
    cached: list[dict[str, Any]] = []
    while len(fresh) < wanted and time.monotonic() < deadline:
        time.sleep(interval)  # a scrape interval, not a wait for something to happen
        (status, body, seconds), costs = costed(client, lambda: get(socket_path, "/metrics"))
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}: {body[:300]!r}")
        read = read_time(body)
        (fresh if read is None or read != last_read else cached).append(row(seconds, costs))
        last_read = read
    return {"first": first, "fresh": fresh, "cached": cached}


def ls_command(url: str, parent: str) -> tuple[list[str], str]:
    """``mini-ipam ls`` reading the map at ``url``: with ``--summary`` when it has it; and which it is."""
    base = [sys.executable, "-m", "mini_ipam", "ls", "--store", url, "--pool", parent, "--store-timeout", "30s"]
    helptext = subprocess.run([*base[:4], "--help"], capture_output=True, text=True, cwd=REPO, check=False).stdout
    if "--summary" in helptext:
        return [*base, "--summary"], "ls --summary"
    return base, "ls"


def run_ls(client: Any, command: list[str]) -> dict[str, Any]:
    """Run ``mini-ipam ls`` once: wall time, output size and what Redis ran for it."""

    def once() -> tuple[float, int]:
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, cwd=REPO, check=False, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: {result.stderr[-500:]!r}")
        return time.perf_counter() - started, len(result.stdout)

    (seconds, size), costs = costed(client, once)
    return row(seconds, costs, output_bytes=size)


def measure_size(
    redis: RedisProcess, directory: Path, parent: str, pools: int, args: argparse.Namespace
) -> dict[str, Any]:
    """A fresh driver on the map as it is now (``pools`` networks): its scrapes, health checks and ls."""
    client = redis.client(timeout=600)
    socket_path = directory / f"scrape{pools}.sock"
    driver = driver_process(
        socket_path, redis.store_url(PREFIX), "--pool", parent, "--host-id", OBSERVER, "--host-ttl", "3600",
        "--store-timeout", "30s", "--log-level", "warning", log=directory / f"scrape{pools}.log",
    )  # fmt: skip
    started = time.monotonic()
    _, costs = costed(client, lambda: driver.start(timeout=args.start_timeout))  # joining the map may read it
    startup = row(time.monotonic() - started, costs)
    try:
        metrics = scrapes(client, socket_path, args.scrapes, args.interval, args.budget)
        health_rows = []
        for _ in range(args.health):
            (status, body, seconds), costs = costed(client, lambda: get(socket_path, "/healthz"))
            if status != 200:
                raise RuntimeError(f"/healthz answered {status}: {body[:300]!r}")
            health_rows.append(row(seconds, costs))
    finally:
        driver.stop()
    command, ls_kind = ls_command(redis.store_url(PREFIX), parent)
    empty_command, _ = ls_command(redis.store_url(EMPTY_PREFIX), parent)
    listing = run_ls(client, command)
    empty = run_ls(client, empty_command)
    client.close()
    health = {key: median([r[key] for r in health_rows]) for key in ("ms", "commands", "script_calls", "redis_ms")}
    return {
        "pools": pools,
        "startup": startup,
        "metrics": metrics,
        "healthz": {**health, "n": len(health_rows), "commandstats": health_rows[-1]["commandstats"]},
        "ls": {**listing, "kind": ls_kind, "empty_map_ms": empty["ms"], "work_ms": listing["ms"] - empty["ms"]},
    }


def steady(result: dict[str, Any], key: str = "ms") -> float:
    """The median steady-state scrape that read the map (the first scrape when none did)."""
    fresh = result["metrics"]["fresh"]
    return median([r[key] for r in fresh]) if fresh else float(result["metrics"]["first"][key])


def short(pools: int) -> str:
    """A size as the issue writes it: 1k, 100k (or the number)."""
    return f"{pools // 1000}k" if pools >= 1000 and pools % 1000 == 0 else str(pools)


def main() -> None:
    """Run the benchmark and write bench/results/scrape_cost.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated pool counts, ascending")
    parser.add_argument("--scrapes", type=int, default=3, help="steady-state scrapes that read the map, per size")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between steady-state scrapes")
    parser.add_argument("--budget", type=float, default=300.0, help="no scrape starts this long after the first")
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds a driver may take to answer")
    parser.add_argument("--health", type=int, default=20, help="GET /healthz per size")
    parser.add_argument("--processes", type=int, default=3, help="processes filling the map")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    report = Report("scrape_cost", "GET /metrics, GET /healthz and mini-ipam ls against map size, on Redis")
    parent = accounts.parent_for(sizes[-1], SIZE)
    results: list[dict[str, Any]] = []
    with temp_directory("scrape") as directory:
        redis = RedisProcess(directory).start()
        try:
            url = redis.store_url(PREFIX)
            filled = 0
            for pools in sizes:
                print(
                    f"filling to {pools:,} pools of /{SIZE} in {parent} (gateway + 2 containers each) ...", flush=True
                )
                accounts.fill(url, parent, pools - filled, host_id=HOST, size=SIZE, processes=args.processes)
                filled = pools
                result = measure_size(redis, directory, parent, pools, args)
                results.append(result)
                metrics = result["metrics"]
                print(
                    f"  {pools:,} pools: /metrics first {metrics['first']['ms']:.1f} ms, "
                    f"steady {steady(result):.1f} ms "
                    f"({len(metrics['fresh'])} reads, {len(metrics['cached'])} cached), /healthz "
                    f"{result['healthz']['ms']:.2f} ms, {result['ls']['kind']} {result['ls']['ms']:.0f} ms",
                    flush=True,
                )
            load = os.getloadavg()
        finally:
            redis.stop()

    print("\nper size: ms (client), Redis commands (all, incl. inside scripts) / script calls / Redis ms of scripts")
    for result in results:
        first, health, listing = result["metrics"]["first"], result["healthz"], result["ls"]
        cached = result["metrics"]["cached"]
        cached_ms = f"{median([r['ms'] for r in cached]):.1f}" if cached else "-"
        print(
            f"  {result['pools']:>7,} pools  start-up {result['startup']['ms']:.0f} ms | "
            f"/metrics first {first['ms']:9.1f} ms {first['commands']:9.0f} cmds "
            f"{first['script_calls']:7.0f} scripts {first['redis_ms']:8.1f} redis ms | steady {steady(result):9.1f} ms "
            f"{steady(result, 'commands'):9.0f} cmds | cached {cached_ms} ms | /healthz {health['ms']:6.2f} ms "
            f"{health['commands']:4.0f} cmds | {listing['kind']} {listing['ms']:8.0f} ms (empty map "
            f"{listing['empty_map_ms']:.0f} ms) {listing['commands']:9.0f} cmds {listing['output_bytes']:,} B"
        )
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")

    small, large = results[0], results[-1]
    span = f"{short(large['pools'])}/{short(small['pools'])}"
    for result in results:
        label = f"{result['pools']:,} pools"
        value = steady(result)
        fresh = len(result["metrics"]["fresh"])
        which = f"median of {fresh} later scrapes that read the map" if fresh else "no later read in time: the first"
        report.add(
            f"scrape: GET /metrics steady state, {label}",
            value,
            "ms",
            f"< {SCRAPE_MS:g}",
            value < SCRAPE_MS,
            f"{which}; {steady(result, 'commands'):.0f} redis commands",
        )
        first = result["metrics"]["first"]
        report.add(
            f"scrape: GET /metrics first scrape, {label}",
            first["ms"],
            "ms",
            f"< {SCRAPE_MS:g}",
            first["ms"] < SCRAPE_MS,
            f"{first['commands']:.0f} redis commands",
        )
        report.add(
            f"scrape: driver start-up until it answers, {label}",
            result["startup"]["ms"],
            "ms",
            note=f"{result['startup']['commands']:.0f} redis commands",
        )
        report.add(
            f"scrape: GET /healthz, {label}",
            result["healthz"]["ms"],
            "ms",
            note=f"{result['healthz']['commands']:.0f} redis commands",
        )
        report.add(
            f"scrape: {result['ls']['kind']}, {label} (less an empty map)",
            result["ls"]["work_ms"],
            "ms",
            note=f"{result['ls']['commands']:.0f} redis commands; {result['ls']['ms']:.0f} ms in all",
        )
    ratio = steady(large) / steady(small)
    report.add(f"scrape: GET /metrics steady state {span}", ratio, "x", f"<= {FLAT:g}", ratio <= FLAT)
    ratio = large["metrics"]["first"]["ms"] / small["metrics"]["first"]["ms"]
    report.add(f"scrape: GET /metrics first scrape {span}", ratio, "x", f"<= {FLAT:g}", ratio <= FLAT)
    ratio = steady(large, "commands") / steady(small, "commands")
    report.add(f"scrape: redis commands per /metrics scrape {span}", ratio, "x", f"<= {FLAT:g}", ratio <= FLAT)
    ratio = large["healthz"]["ms"] / small["healthz"]["ms"]
    report.add(f"scrape: GET /healthz {span}", ratio, "x", f"<= {FLAT:g}", ratio <= FLAT)
    ratio = large["ls"]["commands"] / max(1.0, small["ls"]["commands"])
    report.add(f"scrape: redis commands per {large['ls']['kind']} {span}", ratio, "x", f"<= {FLAT:g}", ratio <= FLAT)
    report.details = {"parent": parent, "size": SIZE, "sizes": sizes, "results": results}
    report.save()


if __name__ == "__main__":
    main()
