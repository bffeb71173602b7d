"""Benchmark 3, Redis round trips per request: at most 3, at any fill.

A real redis-server on a temporary Unix socket and two drivers on it, each with its own key prefix:

* ``empty``: an empty map (the /14 parent of ``flat_allocation.py``);
* ``98%``:   16,056 of the 16,384 /28 slots held, plus a /22 pool whose 1,022 usable addresses are 98%
  claimed (filled in-process with an Allocator under the driver's host id, then served by the driver).

For each request kind, the script sends a batch of requests through a driver's socket and reads the
server's ``INFO commandstats`` before and after: commands per request = the difference in ``calls``,
summed over every command except ``info`` (the script's own reads), divided by the batch size. Every
store operation is one EVALSHA, so commands = round trips (a pipeline would count more commands than
round trips, never fewer). Heartbeats are pushed out of the way with ``--host-ttl 3600``.

    python bench/redis_round_trips.py [--batch 50]
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from support.client import UnixClient, sized_pool
from support.maps import allocator_for, in_threads
from support.processes import RedisProcess, driver_process, temp_directory
from support.report import Report

from mini_ipam import protocol
from mini_ipam.testing import DriverProcess

PARENT = "10.64.0.0/14"
SLOTS = 1 << (28 - 14)
HELD = SLOTS - round(SLOTS * 0.02)
HOST = "bench"
LIMIT = 3


def commandstats(client: Any) -> Counter[str]:
    """Calls per command so far (``cmdstat_evalsha`` -> ``evalsha``), including commands run inside scripts."""
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()})


class Monitor:
    """Every command the server runs, from ``MONITOR``; a script's own commands are marked ``lua`` there."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seen: list[dict[str, Any]] = []
        self._monitor = client.monitor().__enter__()
        self._markers = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # the connection is closed when the server stops
            while True:
                self.seen.append(self._monitor.next_command())

    def client_commands(self, action: Callable[[], object]) -> list[str]:
        """Run ``action``; return the commands clients sent meanwhile (not the ones scripts ran), by name."""
        self._markers += 1
        start, end = f"ECHO bench-start-{self._markers}", f"ECHO bench-end-{self._markers}"
        self.client.echo(start[5:])
        action()
        self.client.echo(end[5:])
        deadline = time.monotonic() + 10
        while not any(entry["command"] == end for entry in self.seen[-50:]) and time.monotonic() < deadline:
            time.sleep(0.01)
        commands = [entry["command"] for entry in self.seen]
        window = commands[commands.index(start) + 1 : commands.index(end)]
        return [
            command.split(" ", 1)[0].lower()
            for command, entry in zip(window, self.seen[commands.index(start) + 1 :], strict=False)
            if entry["client_type"] != "lua"
        ]


def count(monitor: Monitor, action: Callable[[], object], times: int) -> dict[str, Any]:
    """Run ``action`` ``times`` times; return round trips per call, and what the server ran per call."""
    before = commandstats(monitor.client)
    sent = Counter(monitor.client_commands(lambda: [action() for _ in range(times)]))
    after = commandstats(monitor.client)
    ran = {name: (after[name] - before.get(name, 0)) / times for name in after if name not in ("info", "echo")}
    return {
        "round_trips": sum(sent.values()) / times,
        "sent_by_driver": {name: calls / times for name, calls in sent.items()},
        "evalsha": ran.get("evalsha", 0.0),
        "commands_inside_script": sum(v for name, v in ran.items() if name not in sent),
        "commandstats": {name: value for name, value in ran.items() if value},
    }


def prepare_full_map(url: str) -> str:
    """Fill the map at ``url`` to 98% and make a /22 pool 98% full of addresses; return its PoolID."""
    from mini_ipam.allocator import PoolRequest
    from stores.redis import RedisStore

    allocator = allocator_for(RedisStore.from_url(url), PARENT, HOST)
    request = PoolRequest(space="local", size=28)
    in_threads(lambda: lambda: allocator.request_pool(request), HELD - 64)  # the /22 takes the other 64 slots
    pool_id = allocator.request_pool(PoolRequest(space="local", size=22)).pool_id
    usable = (1 << 10) - 2
    in_threads(lambda: lambda: allocator.request_address(pool_id), usable - round(usable * 0.02))
    return str(pool_id)


def measure(client: UnixClient, monitor: Monitor, address_pool: str, batch: int) -> dict[str, dict[str, Any]]:
    """Round trips per request for each request kind, through one driver."""
    results: dict[str, dict[str, Any]] = {}
    pool_ids: list[str] = []
    results["RequestPool"] = count(
        monitor,
        lambda: pool_ids.append(client.ok("IpamDriver.RequestPool", sized_pool())["PoolID"]),
        batch,
    )
    gateways = iter(pool_ids)
    results["RequestAddress (gateway)"] = count(
        monitor,
        lambda: client.ok("IpamDriver.RequestAddress", protocol.request_address(next(gateways), gateway=True)),
        batch,
    )
    addresses: list[str] = []
    few = min(batch, 10)  # the 98% pool has 20 free addresses
    results["RequestAddress"] = count(
        monitor,
        lambda: addresses.append(
            client.ok("IpamDriver.RequestAddress", protocol.request_address(address_pool))["Address"]
        ),
        few,
    )
    held = iter(addresses)
    results["ReleaseAddress"] = count(
        monitor,
        lambda: client.ok("IpamDriver.ReleaseAddress", {"PoolID": address_pool, "Address": next(held).split("/")[0]}),
        few,
    )
    releases = iter(pool_ids)
    results["ReleasePool"] = count(
        monitor, lambda: client.ok("IpamDriver.ReleasePool", {"PoolID": next(releases)}), batch
    )
    # A swarm network's pool: the gateway request also checks the pool has no gateway yet (a second
    # network), and the gateway is released before the pool, as swarm does.
    shared: list[str] = []
    results["RequestPool (global)"] = count(
        monitor,
        lambda: shared.append(client.ok("IpamDriver.RequestPool", sized_pool(space="global"))["PoolID"]),
        batch,
    )
    global_gateways = iter(shared)
    granted: list[tuple[str, str]] = []
    results["RequestAddress (global gateway)"] = count(
        monitor,
        lambda: granted.append(
            (
                pool_id := next(global_gateways),
                client.ok("IpamDriver.RequestAddress", protocol.request_address(pool_id, gateway=True))["Address"],
            )
        ),
        batch,
    )
    given_back = iter(granted)
    results["ReleaseAddress (global gateway)"] = count(
        monitor,
        lambda: client.ok("IpamDriver.ReleaseAddress", _release_body(next(given_back))),
        batch,
    )
    shared_releases = iter(shared)
    results["ReleasePool (global)"] = count(
        monitor, lambda: client.ok("IpamDriver.ReleasePool", {"PoolID": next(shared_releases)}), batch
    )
    return results


def _release_body(granted: tuple[str, str]) -> dict[str, str]:
    """The ReleaseAddress of a (PoolID, address with prefix length) the driver granted."""
    return {"PoolID": granted[0], "Address": granted[1].split("/")[0]}


def main() -> None:
    """Run the benchmark and write bench/results/redis_round_trips.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    report = Report("redis_round_trips", "Redis commands (round trips) per request, empty map and 98% full")
    table: dict[str, dict[str, dict[str, Any]]] = {}
    with temp_directory("rtt") as directory:
        redis = RedisProcess(directory).start()
        drivers: list[DriverProcess] = []
        try:
            full_pool = prepare_full_map(redis.store_url("rttfull"))  # before MONITOR, which slows every command
            monitor = Monitor(redis.client())
            for fill_name, prefix in (("empty", "rttempty"), ("98%", "rttfull")):
                url = redis.store_url(prefix)
                driver = driver_process(
                    directory / f"{prefix}.sock",
                    url,
                    "--pool",
                    PARENT,
                    "--host-id",
                    HOST,
                    "--host-ttl",
                    "3600",
                    "--recovery-window",  # a map made for the benchmark has no members to wait for
                    "0s",
                    "--log-level",
                    "warning",
                    log=directory / f"{prefix}.log",
                ).start()
                drivers.append(driver)
                client = UnixClient(driver.socket_path)
                address_pool = full_pool
                if fill_name == "empty":
                    address_pool = client.ok("IpamDriver.RequestPool", sized_pool(22))["PoolID"]
                measure(client, monitor, address_pool, 5)  # warm up: connections, script loading
                table[fill_name] = measure(client, monitor, address_pool, args.batch)
        finally:
            for driver in drivers:
                driver.stop()
            redis.stop()

    print("Redis round trips per request (client commands seen by MONITOR; evalsha from INFO commandstats):")
    for kind in table["empty"]:
        for fill_name in table:
            row = table[fill_name][kind]
            print(
                f"  {kind:<26} {fill_name:<6} round trips {row['round_trips']:5.2f}  evalsha {row['evalsha']:5.2f}"
                f"  sent {row['sent_by_driver']}  run inside the script {row['commands_inside_script']:5.1f}"
            )
    worst = max(row["round_trips"] for kinds in table.values() for row in kinds.values())
    for fill_name, kinds in table.items():
        for kind, row in kinds.items():
            if kind.startswith(("RequestPool", "RequestAddress")):
                value = row["round_trips"]
                report.add(f"redis round trips: {kind}, {fill_name} map", value, "trips", f"<= {LIMIT}", value <= LIMIT)
    report.add("redis round trips: worst of all request kinds and fills", worst, "trips", f"<= {LIMIT}", worst <= LIMIT)
    report.details = {"batch": args.batch, "per_request": table}
    report.save()


if __name__ == "__main__":
    main()
