"""Benchmark 1, the framework floor: what the driver costs per request over a bare Flask route.

Four servers run side by side, each on its own Unix socket, all served by waitress with the driver's
own settings (``mini_ipam.server.serve``: 8 threads):

* ``driver/info``     mini-ipam, memory store, the default log level (info: granted address requests
                      are not logged there, refusals and pool requests are; to a file);
* ``driver/debug``    the same with ``--log-level debug``: a line for every request;
* ``driver/warning``  the same with ``--log-level warning``: no request lines;
* ``bare``            a one-route Flask app that reads the body and returns ``{"Data": {}}``;
* ``raw``             canned bytes from a plain socket loop: the client's and kernel's own cost.

One client thread on one keep-alive connection per server (``support.client.UnixClient``) sends, per pair,
a RequestAddress and the ReleaseAddress of the address it got (the bare and raw servers get the same
two bodies). The variants are interleaved round by round; a figure is the median over rounds of the
per-round ratio of median pair times. Target: driver / bare <= 1.3 (at the default level; the
other two show what logging every request, or nothing, costs).

    python bench/framework_floor.py [--rounds 41] [--pairs 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from support import BENCH
from support.client import UnixClient, answers, sized_pool
from support.processes import driver_process, temp_directory
from support.report import Report
from support.stats import describe, flatten, interleave, median

from mini_ipam import protocol
from mini_ipam.testing import stop_process, wait_until

TARGET = 1.3
LEVELS = ("info", "debug", "warning")
"""The driver variants, by log level; info is the default."""


def driver_batch(client: UnixClient, pool_id: str, pairs: int) -> Callable[[], list[float]]:
    """A batch of RequestAddress + ReleaseAddress pairs through the driver; seconds per request."""
    return _pairs(client, pool_id, pairs, lambda reply: json.loads(reply)["Address"].split("/")[0])


def bare_batch(client: UnixClient, pool_id: str, pairs: int) -> Callable[[], list[float]]:
    """The same two posts, with the same bodies and JSON handling, to a server that does no IPAM."""
    return _pairs(client, pool_id, pairs, _decoded_then_fixed)


def _decoded_then_fixed(reply: bytes) -> str:
    """Decode the reply as the driver's variant does, then release a fixed address (nothing was claimed)."""
    json.loads(reply)
    return "10.0.0.2"


def _pairs(client: UnixClient, pool_id: str, pairs: int, released: Callable[[bytes], str]) -> Callable[[], list[float]]:
    """Posts a RequestAddress, then the ReleaseAddress of ``released(reply)``; seconds per request."""
    request = json.dumps(protocol.request_address(pool_id)).encode()
    post = client.post
    clock = time.perf_counter

    def run() -> list[float]:
        samples = []
        for _ in range(pairs):
            started = clock()
            status, body = post("/IpamDriver.RequestAddress", request)
            release = json.dumps({"PoolID": pool_id, "Address": released(body)}).encode()
            status2, _ = post("/IpamDriver.ReleaseAddress", release)
            samples.append((clock() - started) / 2)
            if status != 200 or status2 != 200:
                raise RuntimeError(f"server refused: {status} {body!r}")
        return samples

    return run


def start_baseline(directory: Path, name: str, *flags: str) -> subprocess.Popen[bytes]:
    """Start ``bare_server.py`` on ``directory/name.sock`` and wait until it answers."""

    socket_path = directory / f"{name}.sock"
    log = (directory / f"{name}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, str(BENCH / "bare_server.py"), "--socket", str(socket_path), *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_until(lambda: answers(socket_path), timeout=30, what=f"{name} server")
    return process


def main() -> None:
    """Run the benchmark and write bench/results/framework_floor.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--pairs", type=int, default=100)
    args = parser.parse_args()
    report = Report("framework_floor", "driver per-request cost (RequestAddress+ReleaseAddress) vs a bare Flask route")
    with temp_directory("floor") as directory:
        drivers = {
            level: driver_process(
                directory / f"{level}.sock", "memory://", "--pool", "10.0.0.0/16", "--log-level", level,
                log=directory / f"{level}.log",
            )
            for level in LEVELS
        }  # fmt: skip
        baselines: list[subprocess.Popen[bytes]] = []
        try:
            for driver in drivers.values():
                driver.start()
            baselines.append(start_baseline(directory, "bare"))
            baselines.append(start_baseline(directory, "raw", "--raw"))
            clients = {name: UnixClient(directory / f"{name}.sock") for name in (*LEVELS, "bare", "raw")}
            pools = {level: clients[level].ok("IpamDriver.RequestPool", sized_pool(24))["PoolID"] for level in LEVELS}
            variants = {f"driver/{level}": driver_batch(clients[level], pools[level], args.pairs) for level in LEVELS}
            variants["bare"] = bare_batch(clients["bare"], pools["info"], args.pairs)
            variants["raw"] = bare_batch(clients["raw"], pools["info"], args.pairs)
            for run in variants.values():  # warm up: imports, caches, first connections
                run()
            samples = interleave(variants, args.rounds)
            log_lines = {level: sum(1 for _ in (directory / f"{level}.log").open()) for level in LEVELS}
        finally:
            for driver in drivers.values():
                driver.stop()
            for process in baselines:
                stop_process(process)

    print(f"per request, median of {args.rounds} interleaved rounds of {args.pairs} pairs (one client thread):")
    for name, rounds in samples.items():
        print(f"  {name:<16} {median([median(r) for r in rounds]) * 1e6:8.1f} us")
    report.details = {
        "rounds": args.rounds,
        "pairs_per_round": args.pairs,
        "per_request": {name: describe(flatten(rounds)) for name, rounds in samples.items()},
        "log_lines": log_lines,
        "client": "one thread, one keep-alive connection per server, raw-socket HTTP/1.1 (support.client.UnixClient)",
    }
    for level in LEVELS:
        name = f"framework floor: driver (log {level}) / bare Flask"
        report.ratio(name, samples[f"driver/{level}"], samples["bare"], TARGET)
    report.ratio("framework floor: bare Flask / raw socket (client floor)", samples["bare"], samples["raw"])
    report.add("framework floor: raw socket round trip", median(flatten(samples["raw"])) * 1e6, "us")
    report.save()


if __name__ == "__main__":
    main()
