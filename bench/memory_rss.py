"""Benchmark 7, memory: the resident size (VmRSS) of a driver holding 100,000 pools. Target <= 200 MB.

Filling 100,000 pools through the socket would take minutes, so the state is built at once: a state
file is written by ``support.maps.build_state_file`` (an Allocator over a MemoryStore, dumped in the file store's
own snapshot format) and a driver is started on it with ``--store file://...``. The file store *is* the
memory store plus a journal, so the driver then holds the memory store's structures; its RSS is read from
``/proc/<pid>/status`` once it answers, after a few requests. That RSS also holds what loading left
behind (the parsed JSON is freed, but the allocator keeps some of those pages), so a cross-check at
10,000 pools compares a file-loaded driver with a ``memory://`` driver filled through its socket.

Drivers measured:

* ``empty``: ``memory://``, nothing held (the interpreter, Flask, the driver's code);
* ``100k pools``: 100,000 /28 pools, no addresses: the target's case;
* ``100k pools + gateways``: each pool also holds its gateway address, as every Docker network does;
* ``10k file`` / ``10k memory``: the cross-check.

An in-process ``tracemalloc`` snapshot of a FileStore loaded with 20,000 pools gives the bytes per pool by
allocation site: where the memory goes.

    python bench/memory_rss.py
"""

from __future__ import annotations

import argparse
import gc
import linecache
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.client import UnixClient, sized_pool
from support.maps import build_state_file, driver_holds, in_threads
from support.processes import driver_process, proc_status, rss_kb, temp_directory
from support.report import Report

from mini_ipam.testing import DriverProcess

PARENT = "10.0.0.0/11"  # 131,072 /28 slots
HOST = "bench"
POOLS = 100_000
TARGET_MB = 200.0


def measure(driver: DriverProcess, pools: int) -> dict[str, float]:
    """VmRSS and VmHWM of a ready driver, in MB, after a few requests (and a check that it holds ``pools``)."""
    driver_holds(driver.socket_path, pools, PARENT)
    with UnixClient(driver.socket_path) as client:
        for _ in range(20):
            client.ok("Plugin.Activate")
    return {"VmRSS_MB": rss_kb(driver.pid) / 1024, "VmHWM_MB": proc_status(driver.pid, "VmHWM") / 1024}


def breakdown(directory: Path, pools: int = 20_000) -> tuple[float, list[dict[str, Any]]]:
    """Bytes per pool of a loaded FileStore, in all and by allocation site (tracemalloc)."""
    from stores.file import FileStore

    state = directory / "traced" / "state.json"
    state.parent.mkdir()
    build_state_file(state, pools, PARENT, HOST, verify=False)
    gc.collect()
    tracemalloc.start()
    store = FileStore(state)
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    store.close()
    statistics = snapshot.statistics("lineno")
    total = sum(stat.size for stat in statistics) / pools
    sites = []
    for stat in statistics[:10]:
        frame = stat.traceback[0]
        sites.append(
            {
                "bytes_per_pool": round(stat.size / pools, 1),
                "blocks_per_pool": round(stat.count / pools, 2),
                "where": f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}",
                "code": linecache.getline(frame.filename, frame.lineno).strip(),
            }
        )
    return total, sites


def main() -> None:
    """Run the benchmark and write bench/results/memory_rss.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    report = Report("memory_rss", "VmRSS of a driver holding 100,000 pools (state built at once, loaded at start-up)")
    flags = ("--pool", PARENT, "--host-id", HOST, "--log-level", "warning")
    rss: dict[str, dict[str, float]] = {}
    with temp_directory("rss") as directory:

        def driver(name: str, store: str) -> DriverProcess:
            return driver_process(directory / f"{name}.sock", store, *flags, log=directory / f"{name}.log")

        cases = [("100k pools", POOLS, False), ("100k pools + gateways", POOLS, True), ("10k file", 10_000, False)]
        for name, pools, gateways in cases:
            tag = name.replace(" ", "_").replace("+", "")
            state = directory / tag / "state.json"
            state.parent.mkdir()
            seconds = build_state_file(state, pools, PARENT, HOST, gateways=gateways, verify=False)
            size = state.stat().st_size / 1e6
            print(f"state file for {name!r} written in {seconds:.1f} s ({size:.1f} MB)", flush=True)
            running = driver(tag, f"file://{state}").start(timeout=300)
            try:
                rss[name] = measure(running, pools)
            finally:
                running.stop()
            print(f"  {name}: {rss[name]}", flush=True)
        empty = driver("empty", "memory://").start()
        try:
            rss["empty"] = measure(empty, 0)
        finally:
            empty.stop()
        memory = driver("memory10k", "memory://").start()
        try:

            def filler() -> Callable[[], object]:
                client = UnixClient(memory.socket_path)
                return lambda: client.ok("IpamDriver.RequestPool", sized_pool())

            in_threads(filler, 10_000)
            rss["10k memory"] = measure(memory, 10_000)
        finally:
            memory.stop()
        traced_per_pool, sites = breakdown(directory)

    base = rss["empty"]["VmRSS_MB"]
    print("resident size (MB):")
    for name, values in rss.items():
        print(f"  {name:<24} VmRSS {values['VmRSS_MB']:7.1f}   VmHWM {values['VmHWM_MB']:7.1f}")
    print(f"tracemalloc, FileStore with 20,000 pools: {traced_per_pool:.0f} bytes per pool; top allocation sites:")
    for site in sites:
        where = f"{site['where']}  {site['code']}"
        print(f"  {site['bytes_per_pool']:7.1f} B/pool  {site['blocks_per_pool']:5.2f} blocks  {where}")
    for name in ("100k pools", "100k pools + gateways"):
        value = rss[name]["VmRSS_MB"]
        report.add(f"memory: VmRSS with {name}", value, "MB", f"<= {TARGET_MB:g}", value <= TARGET_MB)
        report.add(f"memory: VmRSS with {name} / target", value / TARGET_MB, "x", "<= 1", value <= TARGET_MB)
        report.add(f"memory: bytes per pool ({name}, above the empty driver)", (value - base) * 2**20 / POOLS, "B")
    report.add("memory: empty driver VmRSS", base, "MB")
    per_file = (rss["10k file"]["VmRSS_MB"] - base) / 10_000
    per_memory = (rss["10k memory"]["VmRSS_MB"] - base) / 10_000
    report.add(
        "memory: 10k pools, file-loaded / memory:// filled through the socket (above empty)",
        per_file / per_memory,
        note="how much of the RSS is loading's leftovers",
    )
    report.add("memory: tracemalloc bytes per pool (FileStore, 20k pools)", traced_per_pool, "B")
    report.details = {"rss": rss, "tracemalloc_bytes_per_pool": traced_per_pool, "tracemalloc_top_sites": sites}
    report.save()


if __name__ == "__main__":
    main()
