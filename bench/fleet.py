"""Benchmark 12, a fleet on one Redis: 1 to 128 simulated hosts allocating and releasing at once.

One redis-server on a temporary Unix socket. A run simulates ``k`` hosts (``--hosts``, default 1, 8, 16,
32, 64, 128), each with its own host id (``fleet-<n>``) and its own ``RedisStore`` connection, calling
the driver's own ``Allocator`` over it (no HTTP: the store calls a driver makes, as fast as Python
makes them). The hosts run as threads of at most ``--processes`` processes (this machine has 2 cores:
more processes would only queue). Each run has a map of its own (key prefix ``fleet-<k>``).

Every host, for ``--seconds``, repeats a mix a Docker host makes:

* a network created: RequestPool of a random size from /24 to /29 (smaller ones more often), then its
  gateway (RequestAddress with the gateway flag), at most ``MAX_NETWORKS`` networks a host;
* a container started: RequestAddress in one of its networks (at most ``MAX_CONTAINERS`` a host);
  a full pool's refusal is counted, not an error;
* a container stopped: ReleaseAddress;
* a network removed: its containers' ReleaseAddress, the gateway's ReleaseAddress, then ReleasePool.

Figures: requests per second of the whole fleet; the Redis-core ceiling for that mix, 1e6 / (Redis
microseconds per request, from ``INFO commandstats`` over the run: the script calls' usec divided by
the requests) and the throughput's share of it; p50 and p99 latency per request kind; CPU used by
Redis and by the hosts. At the end of every run, before anything is released: 0 overlapping subnets
and 0 duplicate addresses, both among what the hosts believe they hold and in the store (its pools,
each pool's address claims), and the store holding exactly what the hosts hold.

Draws ``bench/fleet.png`` (throughput and the ceiling against hosts, and p50/p99) (committed, as
``latency_vs_fill.png`` is) and writes ``bench/results/fleet.json``.

    python bench/fleet.py [--hosts 1,8,16,32,64,128] [--seconds 10] [--processes 4]
    python bench/fleet.py --replot      # redraw the PNG from bench/results/fleet.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from support import BENCH, RESULTS
from support import redis_accounts as accounts
from support.processes import RedisProcess, cpu_seconds, temp_directory
from support.report import Report
from support.stats import percentile

PARENT = "10.0.0.0/10"
SIZES = (24, 25, 26, 27, 28, 28, 29, 29)
"""Pool sizes a network asks for, drawn uniformly: small networks are the common case."""
MAX_NETWORKS = 6
MAX_CONTAINERS = 24
KINDS = accounts.REQUEST_KINDS
PLOT = BENCH / "fleet.png"
FAILED: Any = object()
"""What ``Host.timed`` returns for a call that was refused or failed (a release returns None)."""


class Host:
    """One simulated host: its id, its own store connection, what it holds, and its latencies."""

    def __init__(self, url: str, host_id: str, seed: int) -> None:
        self.host_id = host_id
        self.claims = accounts.allocator(url, PARENT, host_id)
        self.claims.store.attach()  # joined before the run starts: the run measures requests only
        self.random = random.Random(seed)
        self.networks: dict[Any, dict[str, Any]] = {}  # PoolId -> {"gateway": address, "containers": [addresses]}
        self.latency: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.refused = 0
        self.errors: list[str] = []
        self.error_count = 0

    def timed(self, kind: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Make one call, recording its latency under ``kind``; its result, or FAILED when it was refused or failed."""
        from mini_ipam.errors import Exhausted

        started = time.perf_counter()
        try:
            result = call(*args, **kwargs)
        except Exhausted:
            self.refused += 1
            return FAILED
        except Exception as exc:  # a finding, reported with the run: the run goes on
            self.error_count += 1
            if len(self.errors) < 5:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            return FAILED
        finally:
            self.latency[kind].append(time.perf_counter() - started)
        return result

    def containers(self) -> int:
        """How many container addresses this host holds now."""
        return sum(len(network["containers"]) for network in self.networks.values())

    def step(self) -> None:
        """One thing a Docker host does."""
        from mini_ipam.allocator import PoolRequest

        choice = self.random.random()
        if not self.networks or (choice < 0.12 and len(self.networks) < MAX_NETWORKS):
            request = PoolRequest(space="local", size=self.random.choice(SIZES))
            pool = self.timed("RequestPool", self.claims.request_pool, request)
            if pool is FAILED:
                return
            gateway = self.timed("RequestAddress (gateway)", self.claims.request_address, pool.pool_id, gateway=True)
            self.networks[pool.pool_id] = {"gateway": None if gateway is FAILED else gateway.ip, "containers": []}
        elif choice < 0.22 and len(self.networks) > 1:
            pool_id = self.random.choice(list(self.networks))
            network = self.networks[pool_id]
            # A release that failed leaves the address (or pool) as held: the check at the end compares with the store.
            for address in list(network["containers"]):
                if self.timed("ReleaseAddress", self.claims.release_address, pool_id, address) is not FAILED:
                    network["containers"].remove(address)
            gateway = network["gateway"]
            if (
                gateway is not None
                and self.timed("ReleaseAddress (gateway)", self.claims.release_address, pool_id, gateway) is not FAILED
            ):
                network["gateway"] = None
            if self.timed("ReleasePool", self.claims.release_pool, pool_id) is not FAILED:
                del self.networks[pool_id]
        elif choice < 0.65 and self.containers() < MAX_CONTAINERS:
            pool_id = self.random.choice(list(self.networks))
            address = self.timed("RequestAddress", self.claims.request_address, pool_id)
            if address is not FAILED:
                self.networks[pool_id]["containers"].append(address.ip)
        else:
            held = [(pool_id, n) for pool_id, n in self.networks.items() if n["containers"]]
            if held:
                pool_id, network = self.random.choice(held)
                address = self.random.choice(network["containers"])
                if self.timed("ReleaseAddress", self.claims.release_address, pool_id, address) is not FAILED:
                    network["containers"].remove(address)

    def run(self, deadline: float) -> None:
        """Steps until ``deadline`` (monotonic)."""
        while time.monotonic() < deadline:
            self.step()

    def holdings(self) -> list[tuple[str, list[str]]]:
        """What this host believes it holds: (subnet, every address it was granted), per network."""
        held = []
        for pool_id, network in self.networks.items():
            addresses = [str(a) for a in network["containers"]]
            if network["gateway"] is not None:
                addresses.append(str(network["gateway"]))
            held.append((str(pool_id.subnet), addresses))
        return held


def host_process(url: str, host_ids: list[str], seconds: float, seed: int, barrier: Any, results: Any) -> None:
    """One process of the fleet: a thread per host, started together once every process is ready."""
    hosts = [Host(url, host_id, seed + number) for number, host_id in enumerate(host_ids)]
    barrier.wait()
    cpu_at_start = time.process_time()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=host.run, args=(deadline,)) for host in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(
        {
            "cpu_seconds": time.process_time() - cpu_at_start,
            "latency": {kind: [v for h in hosts for v in h.latency[kind]] for kind in KINDS},
            "refused": sum(h.refused for h in hosts),
            "errors": [e for h in hosts for e in h.errors][:5],
            "error_count": sum(h.error_count for h in hosts),
            "held": {h.host_id: h.holdings() for h in hosts},
        }
    )
    for host in hosts:
        host.claims.store.close()


def overlapping(subnets: list[ipaddress.IPv4Network]) -> int:
    """How many neighbours overlap once sorted (0: no two subnets share an address)."""
    ordered = sorted(subnets, key=lambda net: (int(net.network_address), net.prefixlen))
    pairs = zip(ordered, ordered[1:], strict=False)
    return sum(1 for a, b in pairs if int(b.network_address) <= int(a.broadcast_address))


def duplicates(addresses: list[str]) -> int:
    """How many addresses appear more than once."""
    return sum(count - 1 for count in Counter(addresses).values() if count > 1)


def check(url: str, held: dict[str, list[tuple[str, list[str]]]]) -> dict[str, Any]:
    """Overlaps and duplicates among the hosts' holdings and in the store, and whether the two agree."""
    from stores.redis import RedisStore

    believed = {(host, subnet): sorted(addresses) for host, nets in held.items() for subnet, addresses in nets}
    store = RedisStore.from_url(url, read_only=True, timeout=60.0)
    try:
        in_store: dict[tuple[str, str], list[str]] = {}
        for pool in store.pools():
            claims = store.address_claims(pool.subnet, pool.scope)
            in_store[(pool.owner, str(pool.subnet))] = sorted(str(claim.address) for claim in claims)
    finally:
        store.close()
    return {
        "overlaps_believed": overlapping([ipaddress.IPv4Network(subnet) for _, subnet in believed]),
        "duplicate_addresses_believed": duplicates([a for addresses in believed.values() for a in addresses]),
        "overlaps_in_store": overlapping([ipaddress.IPv4Network(subnet) for _, subnet in in_store]),
        "duplicate_addresses_in_store": duplicates([a for addresses in in_store.values() for a in addresses]),
        "pools_believed": len(believed),
        "pools_in_store": len(in_store),
        "addresses_believed": sum(len(a) for a in believed.values()),
        "addresses_in_store": sum(len(a) for a in in_store.values()),
        "store_matches_hosts": believed == in_store,
    }


def one_run(redis: RedisProcess, hosts: int, seconds: float, processes: int, seed: int) -> dict[str, Any]:
    """``hosts`` hosts on a map of their own for ``seconds``; the run's figures and its final check."""
    url = redis.store_url(f"fleet-{hosts}")
    maker = accounts.allocator(url, PARENT, "fleet-maker")
    maker.store.attach()  # the map exists before the hosts join it
    maker.store.close()
    host_ids = [f"fleet-{number}" for number in range(hosts)]
    parts = [host_ids[number::processes] for number in range(min(processes, hosts))]
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(len(parts) + 1)
    results = context.Queue()
    workers = [
        context.Process(target=host_process, args=(url, part, seconds, seed + 1000 * n, barrier, results))
        for n, part in enumerate(parts)
    ]
    for worker in workers:
        worker.start()
    client = redis.client(timeout=60)
    barrier.wait(timeout=300)
    before = accounts.commandstats(client)
    redis_cpu = cpu_seconds(redis.pid)
    started = time.monotonic()
    outputs = [results.get(timeout=seconds + 600) for _ in workers]
    wall = time.monotonic() - started
    costs = accounts.difference(before, accounts.commandstats(client))
    redis_cpu = cpu_seconds(redis.pid) - redis_cpu
    client.close()
    for worker in workers:
        worker.join(timeout=60)
    latency = {kind: [v for o in outputs for v in o["latency"][kind]] for kind in KINDS}
    requests = sum(len(values) for values in latency.values())
    script = accounts.scripts(costs)
    usec_per_request = script.usec / requests if requests else 0.0
    held = {host: nets for o in outputs for host, nets in o["held"].items()}
    return {
        "hosts": hosts,
        "seconds": seconds,
        "requests": requests,
        "requests_per_second": requests / seconds,
        "wall_seconds": round(wall, 2),
        "redis_usec_per_request": usec_per_request,
        "redis_usec_per_script_call": script.usec_per_call,
        "script_calls_per_request": script.calls / requests if requests else 0.0,
        "ceiling_requests_per_second": 1e6 / usec_per_request if usec_per_request else 0.0,
        "cpu_cores_busy": {
            "redis": round(redis_cpu / seconds, 2),
            "hosts": round(sum(o["cpu_seconds"] for o in outputs) / seconds, 2),
        },
        "latency_ms": {
            kind: {
                "n": len(values),
                "p50": percentile(values, 50) * 1e3 if values else None,
                "p99": percentile(values, 99) * 1e3 if values else None,
            }
            for kind, values in latency.items()
        },
        "all_p50_ms": percentile([v for vs in latency.values() for v in vs], 50) * 1e3,
        "all_p99_ms": percentile([v for vs in latency.values() for v in vs], 99) * 1e3,
        "refused": sum(o["refused"] for o in outputs),
        "errors": sum(o["error_count"] for o in outputs),
        "error_samples": [e for o in outputs for e in o["errors"]][:5],
        "check": check(url, held),
    }


def plot(runs: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    """Throughput and the Redis-core ceiling against hosts; p50 and p99 against hosts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hosts = [run["hosts"] for run in runs]
    figure, (rate, latency) = plt.subplots(1, 2, figsize=(12, 5))
    rate.plot(hosts, [run["requests_per_second"] for run in runs], "o-", label="fleet throughput (requests/s)")
    rate.plot(hosts, [run["ceiling_requests_per_second"] for run in runs], "s--", color="gray",
              label="Redis-core ceiling for the mix (1e6 / Redis us per request)")  # fmt: skip
    rate.set_ylim(bottom=0)
    rate.set_title("throughput of the whole fleet")
    rate.set_ylabel("requests per second")
    for kind in ("RequestPool", "RequestAddress"):
        latency.plot(hosts, [run["latency_ms"][kind]["p50"] for run in runs], "o-", label=f"{kind} p50")
        latency.plot(hosts, [run["latency_ms"][kind]["p99"] for run in runs], "s--", label=f"{kind} p99")
    latency.set_yscale("log")
    latency.set_title("latency per request (log scale)")
    latency.set_ylabel("ms")
    for axes in (rate, latency):
        axes.set_xscale("log", base=2)
        axes.set_xticks(hosts)
        axes.set_xticklabels([str(h) for h in hosts])
        axes.set_xlabel("simulated hosts on one Redis (each its own host id and connection)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8, loc="best")
    figure.suptitle("mini-ipam: a fleet of hosts on one redis-server (Allocator over RedisStore)", fontsize=13)
    figure.text(0.5, 0.01, subtitle, ha="center", fontsize=8, color="dimgray")
    figure.tight_layout(rect=(0, 0.03, 1, 0.97))
    figure.savefig(path)
    plt.close(figure)


def subtitle_of(result: dict[str, Any]) -> str:
    """The plot's small print: what was measured, where and when."""
    machine = result["machine"]
    return (
        f"commit {machine['code']['commit']}, {result['started']}, {machine['cpus']} cores shared, load average "
        f"{machine['loadavg_at_start'][0]:.1f} at start; {result['details']['seconds']} s a run; "
        f"python bench/fleet.py"
    )


def main() -> None:
    """Run the benchmark (or redraw its plot) and write bench/results/fleet.json and bench/fleet.png."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1,8,16,32,64,128", help="comma-separated host counts")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4, help="processes the hosts' threads run in, at most")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the last results")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads((RESULTS / "fleet.json").read_text())
        plot(saved["details"]["runs"], PLOT, subtitle_of(saved))
        print(f"plot: {PLOT}")
        return
    counts = [int(count) for count in args.hosts.split(",")]
    report = Report(
        "fleet", "simulated hosts on one Redis: throughput against the Redis-core ceiling, latency, overlaps"
    )
    runs: list[dict[str, Any]] = []
    with temp_directory("fleet") as directory:
        redis = RedisProcess(directory).start()
        try:
            for hosts in counts:
                run = one_run(redis, hosts, args.seconds, args.processes, args.seed)
                runs.append(run)
                checked = run["check"]
                print(
                    f"  {hosts:>3} hosts: {run['requests_per_second']:7.0f} requests/s (ceiling "
                    f"{run['ceiling_requests_per_second']:7.0f}, {run['redis_usec_per_request']:.0f} us/request), "
                    f"p50 {run['all_p50_ms']:.2f} ms p99 {run['all_p99_ms']:.1f} ms, cpu {run['cpu_cores_busy']}, "
                    f"overlaps {checked['overlaps_believed']}/{checked['overlaps_in_store']}, duplicates "
                    f"{checked['duplicate_addresses_believed']}/{checked['duplicate_addresses_in_store']}, store = "
                    f"hosts: {checked['store_matches_hosts']}, errors {run['errors']}, refused {run['refused']}",
                    flush=True,
                )
        finally:
            redis.stop()

    for run in runs:
        hosts, checked = run["hosts"], run["check"]
        share = run["requests_per_second"] / run["ceiling_requests_per_second"]
        report.add(f"fleet, {hosts} hosts: requests per second", run["requests_per_second"], "/s",
                   note=f"{share:.2f} of the Redis-core ceiling")  # fmt: skip
        report.add(f"fleet, {hosts} hosts: Redis-core ceiling for the mix", run["ceiling_requests_per_second"], "/s",
                   note=f"{run['redis_usec_per_request']:.1f} redis us per request, "
                   f"{run['redis_usec_per_script_call']:.1f} per script call")  # fmt: skip
        cpu = run["cpu_cores_busy"]
        report.add(f"fleet, {hosts} hosts: CPU cores busy", cpu["redis"] + cpu["hosts"], "cores",
                   note=f"of {os.cpu_count()}; redis {cpu['redis']:.2f}, hosts {cpu['hosts']:.2f}")  # fmt: skip
        for kind in ("RequestPool", "RequestAddress"):
            row = run["latency_ms"][kind]
            report.add(f"fleet, {hosts} hosts: {kind} p50", row["p50"], "ms")
            report.add(f"fleet, {hosts} hosts: {kind} p99", row["p99"], "ms")
        clean = (
            checked["store_matches_hosts"] and run["errors"] == 0
            and checked["duplicate_addresses_believed"] == checked["duplicate_addresses_in_store"] == 0
        )  # fmt: skip
        overlaps = checked["overlaps_believed"] + checked["overlaps_in_store"]
        report.add(f"fleet, {hosts} hosts: overlapping subnets + duplicate addresses", overlaps
                   + checked["duplicate_addresses_believed"] + checked["duplicate_addresses_in_store"], "", "0",
                   clean and overlaps == 0,
                   f"{checked['pools_in_store']} pools, {checked['addresses_in_store']} addresses in the store; "
                   f"store = hosts: {checked['store_matches_hosts']}; errors {run['errors']}")  # fmt: skip
    report.details = {
        "parent": PARENT,
        "sizes": SIZES,
        "max_networks": MAX_NETWORKS,
        "max_containers": MAX_CONTAINERS,
        "seconds": args.seconds,
        "processes": args.processes,
        "runs": runs,
    }
    path = report.save()
    saved = json.loads(path.read_text())
    plot(runs, PLOT, subtitle_of(saved))
    print(f"plot: {PLOT.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main()
