"""Benchmark 10, Redis cost per request at fleet scale: server time per call, and memory per pool.

One redis-server on a temporary Unix socket (as every benchmark starts it), filled with ``--pools``
networks (default 100,000; or ``MINI_BENCH_POOLS``), each a /28 with its gateway and two container
addresses, claimed through the driver's own ``Allocator`` over ``RedisStore`` (several processes, no
HTTP: the same store calls, minutes faster). Then, at that full map, each request kind is measured on
its own: ``CONFIG RESETSTAT``, ``--requests`` requests of that kind from one Allocator, and
``INFO commandstats``:

* ``RequestPool``, ``RequestAddress (gateway)``, ``RequestAddress`` (a container's),
  ``ReleaseAddress`` (the container's), ``ReleaseAddress (gateway)``, ``ReleasePool``: in Docker's order,
  on networks made for the purpose, so the map holds ``--pools`` again after each round;
* ``trivial script``: EVALSHA of ``return 1`` on the same server, the floor of any script call, so a
  figure can be read as a ratio on a loaded machine.

A request's Redis time is the ``usec`` of its script calls (EVALSHA, FCALL ...: what a script runs is
inside it) divided by the requests; the target (issue 16) is <= 30 us each, so that one Redis core serves
>= 30,000 driver calls a second. ``--rounds`` rounds of every kind; a figure is the median over rounds.

Memory: ``used_memory`` (``INFO memory``) after the fill minus before it, per pool (target <= 600 B per
pool with a gateway and two containers), and the undo records (``{P}:req:<id>`` keys, ``MEMORY USAGE``)
left after the fill and after each request kind.

    python bench/redis_cost.py [--pools 100000] [--requests 2000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

from support import redis_accounts as accounts
from support.processes import RedisProcess, temp_directory
from support.report import Report
from support.stats import median

from mini_ipam.allocator import PoolRequest
from mini_ipam.pool_id import PoolId

PREFIX = "cost"
HOST = "bench"
SIZE = 28
USEC_TARGET = 30.0
BYTES_TARGET = 600.0
KINDS = accounts.REQUEST_KINDS
FLOOR = "trivial script"


def one_round(claims: Any, client: Any, requests: int) -> dict[str, dict[str, Any]]:
    """Every request kind once, ``requests`` of each, each between a CONFIG RESETSTAT and INFO commandstats."""
    request = PoolRequest(space="local", size=SIZE)
    pools: list[PoolId] = []
    gateways: list[Any] = []
    addresses: list[Any] = []
    steps: dict[str, Callable[[int], None]] = {
        "RequestPool": lambda _: pools.append(claims.request_pool(request).pool_id),
        "RequestAddress (gateway)": lambda n: gateways.append(claims.request_address(pools[n], gateway=True).ip),
        "RequestAddress": lambda n: addresses.append(claims.request_address(pools[n]).ip),
        "ReleaseAddress": lambda n: claims.release_address(pools[n], addresses[n]),
        "ReleaseAddress (gateway)": lambda n: claims.release_address(pools[n], gateways[n]),
        "ReleasePool": lambda n: claims.release_pool(pools[n]),
    }
    trivial = client.register_script("return 1")
    trivial()  # loaded once, outside the account
    steps[FLOOR] = lambda _: trivial()
    rows: dict[str, dict[str, Any]] = {}
    for kind, step in steps.items():
        accounts.reset(client)
        started = time.perf_counter()
        for number in range(requests):
            step(number)
        seconds = time.perf_counter() - started
        costs = accounts.difference({}, accounts.commandstats(client))
        undo_count, undo_bytes = accounts.undo_records(client, PREFIX)
        rows[kind] = {
            **accounts.per_request(costs, requests),
            "client_ms_per_request": seconds / requests * 1e3,
            "undo_records_after": undo_count,
            "undo_bytes_after": undo_bytes,
            "commandstats": accounts.summary(costs, requests),
        }
    return rows


def main() -> None:
    """Run the benchmark and write bench/results/redis_cost.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, default=int(os.environ.get("MINI_BENCH_POOLS", "100000")))
    parser.add_argument("--requests", type=int, default=2000, help="requests of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=3, help="processes filling the map")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    report = Report("redis_cost", f"Redis server time per request and memory per pool at {args.pools:,} pools")
    parent = accounts.parent_for(args.pools + args.requests, SIZE)
    rounds: list[dict[str, dict[str, Any]]] = []
    with temp_directory("cost") as directory:
        redis = RedisProcess(directory).start()
        try:
            url = redis.store_url(PREFIX)
            client = redis.client(timeout=60)
            claims = accounts.allocator(url, parent, HOST, SIZE)
            claims.store.attach()  # the map's identity and the script exist before the baseline
            baseline = accounts.used_memory(client)
            keys_before = client.dbsize()
            print(f"filling {args.pools:,} pools of /{SIZE} in {parent} (gateway + 2 containers each) ...", flush=True)
            started = time.monotonic()
            accounts.fill(url, parent, args.pools, host_id=HOST, size=SIZE, processes=args.processes)
            fill_seconds = time.monotonic() - started
            filled = accounts.used_memory(client)
            keys = client.dbsize() - keys_before
            undo_count, undo_bytes = accounts.undo_records(client, PREFIX)
            print(f"  filled in {fill_seconds:.0f} s; {keys:,} keys; used_memory +{filled - baseline:,} B", flush=True)
            for number in range(args.rounds):
                rows = one_round(claims, client, args.requests)
                rounds.append(rows)
                print(
                    f"  round {number + 1}: "
                    + ", ".join(f"{kind} {row['redis_usec']:.1f}" for kind, row in rows.items())
                    + " us/request",
                    flush=True,
                )
            claims.store.close()
            load = os.getloadavg()
        finally:
            redis.stop()

    floor = [r[FLOOR]["redis_usec"] for r in rounds]
    print(
        f"\nRedis server time per request at {args.pools:,} pools, median of {args.rounds} rounds "
        f"of {args.requests} (INFO commandstats):"
    )
    print(
        f"  {'request':<26} {'redis us':>9} {'/trivial':>9} {'script calls':>13} {'commands':>9} "
        f"{'us/script call':>15} {'client ms':>10} {'undo records':>13}"
    )
    table: dict[str, dict[str, float]] = {}
    for kind in (*KINDS, FLOOR):
        values = {key: median([r[kind][key] for r in rounds]) for key in rounds[0][kind] if key != "commandstats"}
        values["over_trivial"] = median([r[kind]["redis_usec"] / f for r, f in zip(rounds, floor, strict=True)])
        table[kind] = values
        print(
            f"  {kind:<26} {values['redis_usec']:9.1f} {values['over_trivial']:8.1f}x {values['script_calls']:13.2f} "
            f"{values['commands']:9.1f} {values['usec_per_script_call']:15.1f} {values['client_ms_per_request']:10.3f} "
            f"{values['undo_records_after']:13.0f}"
        )
    per_pool = (filled - baseline) / args.pools
    undo_share = undo_bytes / args.pools
    print(
        f"\nmemory: {per_pool:,.0f} B per pool (used_memory delta / pools), of which undo records "
        f"{undo_share:,.1f} B ({undo_count:,} records, {undo_bytes:,} B); {keys / args.pools:.2f} keys per pool"
    )
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")

    for kind in KINDS:
        value = table[kind]["redis_usec"]
        note = f"{table[kind]['over_trivial']:.1f}x the trivial script; {table[kind]['script_calls']:.2f} script calls"
        report.add(
            f"redis cost at {args.pools:,} pools: {kind}",
            value,
            "us",
            f"<= {USEC_TARGET:g}",
            value <= USEC_TARGET,
            note,
        )
    worst = max(table[kind]["redis_usec"] for kind in KINDS)
    report.add(f"redis cost at {args.pools:,} pools: {FLOOR} (floor)", table[FLOOR]["redis_usec"], "us")
    report.add("redis cost: worst request kind / trivial script", worst / table[FLOOR]["redis_usec"], "x")
    report.add(
        "redis cost: calls one core serves (1e6 / worst us)", 1e6 / worst, "/s", ">= 30,000", 1e6 / worst >= 30000
    )
    report.add(
        f"redis memory per pool (gateway + 2 containers) at {args.pools:,}",
        per_pool,
        "B",
        f"<= {BYTES_TARGET:g}",
        per_pool <= BYTES_TARGET,
        f"{keys / args.pools:.2f} keys per pool",
    )
    report.add("redis memory: undo records left after the fill", undo_bytes, "B", note=f"{undo_count:,} records")
    after_pools = table["RequestPool"]
    report.add(
        f"redis memory: undo records after {args.requests} RequestPools",
        after_pools["undo_bytes_after"],
        "B",
        note=f"{after_pools['undo_records_after']:.0f} records",
    )
    report.details = {
        "pools": args.pools,
        "parent": parent,
        "size": SIZE,
        "requests_per_kind": args.requests,
        "rounds": args.rounds,
        "fill_seconds": round(fill_seconds, 1),
        "memory": {
            "baseline_bytes": baseline,
            "filled_bytes": filled,
            "per_pool_bytes": per_pool,
            "keys": keys,
            "undo_records": undo_count,
            "undo_bytes": undo_bytes,
        },
        "per_request": table,
        "rounds_detail": rounds,
    }
    path = report.save()
    if args.json:
        print(json.dumps(json.loads(path.read_text()), indent=2))


if __name__ == "__main__":
    main()
