"""Benchmark 8, start-up: from ``mini-ipam serve`` to a socket that answers Plugin.Activate. Target <= 1 s.

Three drivers, started and stopped in turn, interleaved round by round:

* ``memory``: ``memory://``, empty (the floor: interpreter, imports, the socket);
* ``file 10k``: ``file://`` whose state file holds 10,000 pools (built at once, see ``support.maps.build_state_file``);
* ``redis 10k``: a redis-server on a temporary Unix socket whose map holds 10,000 pools (filled in-process).

The clock starts just before the process is spawned (``python -m mini_ipam serve ...``, what the
``mini-ipam`` console script runs) and stops when a new connection's ``POST /Plugin.Activate`` gets 200;
the socket is polled every millisecond, never slept on. Once, ``-X importtime`` splits off what importing
the code costs.

    python bench/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

from support import REPO
from support.client import answers
from support.maps import allocator_for, build_state_file, driver_holds, in_threads
from support.processes import RedisProcess, driver_process, temp_directory
from support.report import Report
from support.stats import interleave, median

from mini_ipam.testing import DriverProcess, wait_until

PARENT = "10.0.0.0/12"
HOST = "bench"
POOLS = 10_000
TARGET = 1.0


def time_to_answer(driver: DriverProcess) -> float:
    """Seconds from spawning ``driver`` to its first 200 on Plugin.Activate; the driver is stopped after."""
    started = time.perf_counter()
    driver.spawn()
    try:
        driver.wait_ready(timeout=120)
        elapsed = time.perf_counter() - started
    finally:
        driver.stop()
    return elapsed


def one_start(driver: DriverProcess) -> Callable[[], list[float]]:
    """A batch of one start of ``driver``, for ``interleave``."""
    return lambda: [time_to_answer(driver)]


def import_seconds(driver: DriverProcess) -> float:
    """What importing costs in one start of ``driver``: the top-level imports of ``-X importtime``, summed."""
    log = driver.log.with_suffix(".importtime")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", *driver.command[1:]], stdout=out, stderr=out, cwd=REPO
        )
    try:
        wait_until(lambda: answers(driver.socket_path), timeout=60, what="the driver", interval=0.001)
    finally:
        process.terminate()
        process.wait(timeout=30)
    total = 0
    for line in log.read_text().splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match and not match.group(2).startswith(" "):
            total += int(match.group(1))
    return total / 1e6


def main() -> None:
    """Run the benchmark and write bench/results/startup.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from stores.redis import RedisStore

    report = Report("startup", "mini-ipam serve to Plugin.Activate: empty memory, file with 10k pools, Redis with 10k")
    flags = ("--pool", PARENT, "--host-id", HOST, "--log-level", "warning")
    with temp_directory("start") as directory:
        state = directory / "state.json"
        build_state_file(state, POOLS, PARENT, HOST)
        redis = RedisProcess(directory).start()
        try:
            shared = allocator_for(RedisStore.from_url(redis.store_url("start")), PARENT, HOST)
            in_threads(lambda: lambda: shared.request_pool(_dynamic()), POOLS)
            drivers = {
                "memory": driver_process(directory / "m.sock", "memory://", *flags, log=directory / "m.log"),
                "file 10k": driver_process(directory / "f.sock", f"file://{state}", *flags, log=directory / "f.log"),
                "redis 10k": driver_process(
                    directory / "r.sock", redis.store_url("start"), *flags, log=directory / "r.log"
                ),
            }
            for name in ("file 10k", "redis 10k"):
                drivers[name].start()
                driver_holds(drivers[name].socket_path, POOLS, PARENT)
                drivers[name].stop()
            variants = {name: one_start(driver) for name, driver in drivers.items()}
            samples = interleave(variants, args.rounds)
            imports = import_seconds(drivers["memory"])
        finally:
            redis.stop()

    print(f"seconds to the first answer, {args.rounds} interleaved rounds:")
    for name, rounds in samples.items():
        values = [value for chunk in rounds for value in chunk]
        print(f"  {name:<10} median {median(values):6.3f}  min {min(values):6.3f}  max {max(values):6.3f}")
    print(f"  of which importing the code (-X importtime, memory driver): {imports:.3f} s")
    for name, rounds in samples.items():
        value = median([value for chunk in rounds for value in chunk])
        report.add(f"start-up {name}: seconds to Plugin.Activate", value, "s", f"<= {TARGET:g}", value <= TARGET)
        if name != "memory":
            report.ratio(f"start-up {name} / empty memory driver", rounds, samples["memory"])
    report.add("start-up: importing the code (once, -X importtime)", imports, "s")
    report.details = {
        "rounds": args.rounds,
        "pools": POOLS,
        "seconds": {name: [v for chunk in rounds for v in chunk] for name, rounds in samples.items()},
        "import_seconds": imports,
        "cpus": os.cpu_count(),
        "command": "python -m mini_ipam serve --socket ... --store ... (what the mini-ipam script runs)",
    }
    report.save()


def _dynamic() -> object:
    from mini_ipam.allocator import PoolRequest

    return PoolRequest(space="local", size=28)


if __name__ == "__main__":
    main()
