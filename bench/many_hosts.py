"""Benchmark 6, many hosts: 1, 2, 4 and 8 drivers on one Redis, each with its own concurrent clients.

One redis-server on a temporary Unix socket and eight ``mini-ipam serve`` processes on it (host ids
``host-0`` ... ``host-7``, one shared map). A run uses the first k drivers; each gets its own client
process (as each host has its own engine) with 2 threads, a keep-alive connection each, that for
``--seconds`` request a /28 (RequestPool), keep up to ``--hold`` pools, and release the oldest
(ReleasePool) whenever they hold more. The runs (k = 1, 2, 4, 8) are interleaved, ``--rounds`` times.

After every run, before anything is released, the map is read from Redis (``stores.from_url(...).pools()``)
and checked: no two subnets overlap, and the map holds exactly the pools the clients hold.

Figures: aggregate allocations per second, p50 and p99 request latency (RequestPool and ReleasePool
alike), scaling relative to one host, and overlaps (must be 0). CPU use of Redis, drivers and clients
is recorded, because this machine has only 2 cores: 8 drivers + their clients + Redis share them.

    python bench/many_hosts.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import threading
import time
from typing import Any

from support.client import UnixClient, sized_pool
from support.processes import RedisProcess, cpu_seconds, driver_process, temp_directory
from support.report import Report
from support.stats import median, percentile, spread

from mini_ipam.testing import DriverProcess

PARENT = "10.128.0.0/12"
HOSTS = (1, 2, 4, 8)
THREADS = 2


def client_main(socket_path: str, threads: int, seconds: float, hold: int, start_at: float) -> None:
    """A client process: ``threads`` threads allocating and releasing through one driver; JSON to stdout."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    allocations = [0] * threads
    held: list[list[str]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def work(number: int) -> None:
        client = UnixClient(socket_path)
        body = json.dumps(sized_pool(28)).encode()
        mine, times = held[number], latencies[number]
        clock = time.perf_counter
        client.post("/Plugin.Activate")  # connect before the start
        while time.time() < start_at:
            time.sleep(0.001)
        deadline = start_at + seconds
        while time.time() < deadline:
            started = clock()
            status, reply = client.post("/IpamDriver.RequestPool", body)
            times.append(clock() - started)
            if status != 200:
                errors.append(reply.decode(errors="replace"))
                continue
            mine.append(json.loads(reply)["PoolID"])
            allocations[number] += 1
            if len(mine) > hold:
                started = clock()
                status, reply = client.post("/IpamDriver.ReleasePool", json.dumps({"PoolID": mine.pop(0)}).encode())
                times.append(clock() - started)
                if status != 200:
                    errors.append(reply.decode(errors="replace"))
        client.close()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    while time.time() < start_at:
        time.sleep(0.001)
    cpu_at_start = time.process_time()  # this process's CPU from here on: the run, not the interpreter's start
    for worker in workers:
        worker.join()
    result = {
        "cpu_seconds": time.process_time() - cpu_at_start,
        "allocations": sum(allocations),
        "latencies": [value for chunk in latencies for value in chunk],
        "held": [pool for chunk in held for pool in chunk],
        "errors": errors[:5],
        "error_count": len(errors),
    }
    json.dump(result, sys.stdout)


def overlaps(subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
    """How many neighbours overlap, once sorted by address (0 means no two subnets overlap)."""
    ordered = sorted(subnets, key=lambda net: (int(net.network_address), net.prefixlen))
    return sum(
        1 for a, b in zip(ordered, ordered[1:], strict=False) if int(b.network_address) <= int(a.broadcast_address)
    )


def one_run(
    drivers: list[DriverProcess], redis: RedisProcess, hosts: int, seconds: float, hold: int, prefix_url: str
) -> dict[str, Any]:
    """k drivers, each with a client process; the map checked after; everything released again."""
    import stores

    active = drivers[:hosts]
    start_at = time.time() + 1.0
    cpu_before = {"redis": cpu_seconds(redis.pid), "drivers": sum(cpu_seconds(d.pid) for d in drivers)}
    clients = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", str(d.socket_path), "--seconds", str(seconds), "--hold", str(hold)]
            + ["--start-at", repr(start_at)],
            stdout=subprocess.PIPE,
        )
        for d in active
    ]
    outputs = [json.loads(client.communicate(timeout=seconds + 60)[0]) for client in clients]
    cpu = {
        "redis": cpu_seconds(redis.pid) - cpu_before["redis"],
        "drivers": sum(cpu_seconds(d.pid) for d in drivers) - cpu_before["drivers"],
    }
    cpu["clients"] = sum(output["cpu_seconds"] for output in outputs)
    store = stores.from_url(prefix_url)
    try:
        in_map = [pool.subnet for pool in store.pools()]
    finally:
        store.close()
    held = [pool for output in outputs for pool in output["held"]]
    held_subnets = sorted({ipaddress.ip_network(pool.split("/", 1)[1]) for pool in held}, key=str)
    result = {
        "hosts": hosts,
        "allocations_per_second": sum(o["allocations"] for o in outputs) / seconds,
        "latencies": [value for o in outputs for value in o["latencies"]],
        "overlaps": overlaps(in_map),
        "pools_in_map": len(in_map),
        "pools_held_by_clients": len(held),
        "map_matches_clients": sorted(in_map, key=str) == held_subnets and len(held_subnets) == len(held),
        "errors": sum(o["error_count"] for o in outputs),
        "error_samples": [e for o in outputs for e in o["errors"]][:3],
        "cpu_cores_busy": {name: round(value / seconds, 2) for name, value in cpu.items()},
    }
    for driver, output in zip(active, outputs, strict=True):
        client = UnixClient(driver.socket_path)
        for pool in output["held"]:
            client.ok("IpamDriver.ReleasePool", {"PoolID": pool})
        client.close()
    return result


def main() -> None:
    """Run the benchmark (or, with --client, one client process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--hold", type=int, default=8)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args.client, THREADS, args.seconds, args.hold, args.start_at)
        return
    report = Report("many_hosts", "1/2/4/8 drivers on one Redis, 2 client threads each: throughput, latency, overlaps")
    runs: dict[int, list[dict[str, Any]]] = {hosts: [] for hosts in HOSTS}
    with temp_directory("hosts") as directory:
        redis = RedisProcess(directory).start()
        url = redis.store_url("hosts")
        drivers = [
            driver_process(
                directory / f"host{n}.sock",
                url,
                "--pool",
                PARENT,
                "--host-id",
                f"host-{n}",
                "--log-level",
                "warning",
                log=directory / f"host{n}.log",
            )
            for n in range(max(HOSTS))
        ]
        try:
            for driver in drivers:
                driver.spawn()
            for driver in drivers:
                driver.wait_ready()
            one_run(drivers, redis, max(HOSTS), 1.0, args.hold, url)  # warm up every driver
            for number in range(args.rounds):
                order = list(HOSTS) if number % 2 == 0 else list(reversed(HOSTS))
                for hosts in order:
                    result = one_run(drivers, redis, hosts, args.seconds, args.hold, url)
                    runs[hosts].append(result)
                    print(
                        f"  round {number + 1}, {hosts} host(s): {result['allocations_per_second']:7.0f} alloc/s, "
                        f"overlaps {result['overlaps']}, map {result['pools_in_map']} = clients "
                        f"{result['pools_held_by_clients']}: {result['map_matches_clients']}, "
                        f"cpu {result['cpu_cores_busy']}",
                        flush=True,
                    )
        finally:
            for driver in drivers:
                driver.stop()
            redis.stop()

    summary: dict[int, dict[str, Any]] = {}
    for hosts, results in runs.items():
        latencies = [value for result in results for value in result["latencies"]]
        summary[hosts] = {
            "allocations_per_second": median([r["allocations_per_second"] for r in results]),
            "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3,
            "overlaps": sum(r["overlaps"] for r in results),
            "map_matches_clients": all(r["map_matches_clients"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "cpu_cores_busy": {
                name: median([r["cpu_cores_busy"][name] for r in results]) for name in ("redis", "drivers", "clients")
            },
            "requests": len(latencies),
        }
    for hosts, row in summary.items():
        report.add(f"many hosts, {hosts}: allocations per second", row["allocations_per_second"], "/s")
        if hosts > 1:
            # Every round runs 1, 2, 4 and 8 hosts back to back: compare within rounds.
            ratios = [
                r["allocations_per_second"] / one["allocations_per_second"]
                for r, one in zip(runs[hosts], runs[1], strict=True)
            ]
            report.add(f"many hosts, {hosts}: throughput / 1 host", median(ratios), note=spread(ratios))
        cpu = row["cpu_cores_busy"]
        busy = sum(cpu.values())
        note = f"of 2; redis {cpu['redis']:.2f}, drivers {cpu['drivers']:.2f}, clients {cpu['clients']:.2f}"
        report.add(f"many hosts, {hosts}: CPU cores busy (ours, median run)", busy, "cores", note=note)
        report.add(f"many hosts, {hosts}: p50 latency", row["p50_ms"], "ms")
        report.add(f"many hosts, {hosts}: p99 latency", row["p99_ms"], "ms")
        clean = row["overlaps"] == 0 and row["map_matches_clients"] and row["errors"] == 0
        note = f"{args.rounds} runs; map = clients' pools: {row['map_matches_clients']}; errors {row['errors']}"
        report.add(f"many hosts, {hosts}: overlapping subnets", row["overlaps"], "", "0", clean, note)
    report.details = {
        "parent": PARENT,
        "threads_per_host": THREADS,
        "hold": args.hold,
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "cores": 2,
        "summary": summary,
        "runs": {hosts: [{k: v for k, v in r.items() if k != "latencies"} for r in rs] for hosts, rs in runs.items()},
    }
    report.save()


if __name__ == "__main__":
    main()
