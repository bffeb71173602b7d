"""What a redis-server says it spent (``INFO commandstats``, ``INFO memory``), and maps filled fast for it.

The fleet-scale benchmarks (``redis_cost.py``, ``scrape_cost.py``, ``fleet.py``) read Redis's own
accounts rather than the client's clock: ``usec`` in ``INFO commandstats`` is the time the server's one
thread spent in a command, which is what bounds how many calls one Redis core can serve for a whole
fleet. Commands a script runs are counted under their own names *and* inside the script's ``usec``, so
the Redis time of a store call is the ``usec`` of its script commands (``evalsha`` and friends) alone.

Everything here goes through the store's and the driver's public interfaces (``RedisStore.from_url``,
``Allocator``): the benchmarks keep measuring the same requests as the store's internals change.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import multiprocessing
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REQUEST_KINDS = (
    "RequestPool",
    "RequestAddress (gateway)",
    "RequestAddress",
    "ReleaseAddress",
    "ReleaseAddress (gateway)",
    "ReleasePool",
)
"""The requests a network's life sends, in Docker's order, as the fleet-scale benchmarks report them."""
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
"""Commands that run server-side code: a store call's whole Redis time is in their ``usec``."""

OWN_COMMANDS = frozenset({"info", "config|resetstat", "config"})
"""Commands this module itself sends to read the accounts; left out of every delta measured between reads."""

UNDO_RECORD_PATTERN = "{{{prefix}}}:req:*"
"""Undo records of calls that changed the map (``{P}:req:<id>``: ``stores/redis/store.py``'s key map)."""


@dataclass(frozen=True)
class Cost:
    """Calls of one command and the server time they took."""

    calls: int
    usec: float

    @property
    def usec_per_call(self) -> float:
        """Mean server time of one call, in microseconds (0 without calls)."""
        return self.usec / self.calls if self.calls else 0.0


def commandstats(client: Any) -> dict[str, Cost]:
    """Every command's calls and usec so far (``cmdstat_evalsha`` -> ``evalsha``)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): Cost(int(v["calls"]), float(v["usec"])) for name, v in stats.items()}


def difference(before: dict[str, Cost], after: dict[str, Cost], *, own: bool = False) -> dict[str, Cost]:
    """What ran between two ``commandstats`` reads; without ``own``, this module's reads are left out."""
    result = {}
    for name, cost in after.items():
        if not own and name in OWN_COMMANDS:
            continue
        earlier = before.get(name, Cost(0, 0.0))
        if cost.calls > earlier.calls:
            result[name] = Cost(cost.calls - earlier.calls, cost.usec - earlier.usec)
    return result


def reset(client: Any) -> None:
    """``CONFIG RESETSTAT``: zero every command's account (and the server's other statistics)."""
    client.config_resetstat()


def scripts(costs: dict[str, Cost]) -> Cost:
    """The script commands of ``costs`` together: store calls and their whole Redis time."""
    chosen = [cost for name, cost in costs.items() if name in SCRIPT_COMMANDS]
    return Cost(sum(c.calls for c in chosen), sum(c.usec for c in chosen))


def total_commands(costs: dict[str, Cost]) -> int:
    """Every command counted, scripts and the commands they ran alike."""
    return sum(cost.calls for cost in costs.values())


def summary(costs: dict[str, Cost], per: int = 1) -> dict[str, dict[str, float]]:
    """``costs`` as JSON-able rows, calls and usec divided by ``per`` (requests), usec_per_call as is."""
    return {
        name: {"calls": cost.calls / per, "usec": cost.usec / per, "usec_per_call": round(cost.usec_per_call, 2)}
        for name, cost in sorted(costs.items())
    }


def used_memory(client: Any) -> int:
    """``used_memory`` of ``INFO memory``: bytes the server's allocator holds for data and itself."""
    return int(client.info("memory")["used_memory"])


def undo_records(client: Any, prefix: str) -> tuple[int, int]:
    """How many undo records the map ``prefix`` holds now, and their bytes (``MEMORY USAGE`` of each)."""
    keys = list(dict.fromkeys(client.scan_iter(match=UNDO_RECORD_PATTERN.format(prefix=prefix), count=1000)))
    total = 0
    for start in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys[start : start + 1000]:
            pipe.memory_usage(key, samples=0)
        total += sum(size or 0 for size in pipe.execute())
    return len(keys), total


# -- filling a map through the store, in several processes ------------------------------------------


def allocator(url: str, parent: str, host_id: str, size: int = 28) -> Any:
    """An Allocator over a fresh ``RedisStore`` connection at ``url`` (member ``host_id``): a driver minus HTTP."""
    from mini_ipam.allocator import Allocator, Settings
    from stores.redis import RedisStore

    store = RedisStore.from_url(url, member=host_id, timeout=30.0)
    settings = Settings(parents4=(ipaddress.IPv4Network(parent),), default_size4=size, host_id=host_id)
    return Allocator(store, settings)


def network_of_pool(allocator_: Any, size: int) -> tuple[str, str]:
    """One network as Docker makes it: a RequestPool and its gateway; the PoolID and the gateway, as text."""
    from mini_ipam.allocator import PoolRequest

    pool_id = allocator_.request_pool(PoolRequest(space="local", size=size)).pool_id
    gateway = allocator_.request_address(pool_id, gateway=True)
    return str(pool_id), str(gateway.ip)


def _fill_part(url: str, parent: str, host_id: str, size: int, pools: int, containers: int) -> list[str]:
    """One fill process: ``pools`` networks, each with its gateway and ``containers`` container addresses."""
    from mini_ipam.allocator import PoolRequest

    claims = allocator(url, parent, host_id, size)
    request = PoolRequest(space="local", size=size)
    made = []
    try:
        for _ in range(pools):
            pool_id = claims.request_pool(request).pool_id
            claims.request_address(pool_id, gateway=True)
            for _ in range(containers):
                claims.request_address(pool_id)
            made.append(str(pool_id))
    finally:
        claims.store.close()
    return made


def fill(
    url: str,
    parent: str,
    pools: int,
    *,
    host_id: str = "bench",
    size: int = 28,
    containers: int = 2,
    processes: int = 3,
    progress: bool = True,
) -> list[str]:
    """Claim ``pools`` networks (RequestPool, its gateway, ``containers`` addresses each) from ``processes``
    processes, each an Allocator over its own store connection, as one host; return their PoolIDs.

    Several processes, because one Python process is one core's worth of client and the server's
    thread would wait on it; the claims are the driver's own (``Allocator``), minus HTTP.
    """
    started = time.monotonic()
    chunk = 2000
    parts = [min(chunk, pools - start) for start in range(0, pools, chunk)]
    made: list[str] = []
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as executor:
        futures = [executor.submit(_fill_part, url, parent, host_id, size, part, containers) for part in parts]
        for future in concurrent.futures.as_completed(futures):
            made.extend(future.result())
            if progress and len(made) % (chunk * 10) == 0:
                rate = len(made) / (time.monotonic() - started)
                print(f"    filled {len(made):,} of {pools:,} pools ({rate:,.0f}/s)", flush=True)
    return made


def parent_for(pools: int, size: int = 28, base: str = "10.0.0.0") -> str:
    """The smallest IPv4 parent at ``base`` with room for ``pools`` /size subnets and a quarter more."""
    needed = max(1, int(pools * 1.25))
    length = size - max(0, (needed - 1).bit_length())
    return str(ipaddress.IPv4Network((base, length), strict=False))


def per_request(costs: dict[str, Cost], requests: int) -> dict[str, float]:
    """Script calls, their Redis time and every command counted, per request."""
    script = scripts(costs)
    return {
        "script_calls": script.calls / requests,
        "redis_usec": script.usec / requests,
        "usec_per_script_call": script.usec_per_call,
        "commands": total_commands(costs) / requests,
    }


def names(costs: Iterable[str]) -> str:
    """The command names, for a printed line."""
    return ",".join(sorted(costs))
