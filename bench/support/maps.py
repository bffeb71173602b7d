"""Filling stores for benchmarks: pools claimed in-process, state files written at once, checks of a loaded driver."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mini_ipam import protocol
from support.client import UnixClient, sized_pool

T = TypeVar("T")


def allocator_for(store: Any, parent: str, host_id: str = "bench", size: int = 28) -> Any:
    """An in-process Allocator over ``store``, carving ``/size`` pools from ``parent``."""
    from mini_ipam.allocator import Allocator, Settings

    settings = Settings(parents4=(ipaddress.IPv4Network(parent),), default_size4=size, host_id=host_id)
    return Allocator(store, settings)


def fill(allocator: Any, count: int, size: int = 28) -> list[Any]:
    """Claim ``count`` dynamic pools, lowest first; return their PoolIds."""
    from mini_ipam.allocator import PoolRequest

    request = PoolRequest(space="local", size=size)
    return [allocator.request_pool(request).pool_id for _ in range(count)]


def in_threads(make_worker: Callable[[], Callable[[], T]], count: int, threads: int = 4) -> list[T]:
    """Call a worker ``count`` times in all, from ``threads`` threads each with its own worker; return the results.

    ``make_worker`` is called once per thread (give each its own connection); used to fill maps faster.
    """
    import concurrent.futures

    share, rest = divmod(count, threads)

    def run(number: int) -> list[T]:
        worker = make_worker()
        return [worker() for _ in range(share + (1 if number < rest else 0))]

    with concurrent.futures.ThreadPoolExecutor(threads) as executor:
        return [result for chunk in executor.map(run, range(threads)) for result in chunk]


def build_state_file(
    path: Path,
    pools: int,
    parent: str,
    host_id: str,
    size: int = 28,
    *,
    gateways: bool = False,
    holes: int = 0,
    seed: int = 6,
    journal_pairs: int = 0,
    verify: bool = True,
) -> float:
    """Write a file store's state file holding ``pools`` live /size pools of ``host_id``; return seconds taken.

    The pools (and, with ``gateways``, each pool's gateway address) are claimed through an Allocator over a
    MemoryStore, the file store's own in-memory part, lowest first as the driver would; with ``holes``,
    that many more are claimed and a random sample of them released again, leaving scattered free slots.
    The snapshot is the one ``FileStore`` itself writes when it compacts its journal: the same format and
    the same events, written at once instead of one fdatasync-ed journal line per change. With
    ``journal_pairs``, the journal after that snapshot (``<path>.0.log``, one JSON event a line, as
    ``FileStore`` appends them) holds that many RequestPool + ReleasePool pairs. With ``verify``,
    the file is opened once with ``FileStore`` to prove it loads (``driver_holds`` checks a driver that
    loaded a hole-less file more cheaply).
    """
    import random

    from stores.file import FORMAT, FileStore
    from stores.journal import encode_event
    from stores.memory import MemoryStore

    started = time.perf_counter()
    memory = MemoryStore()
    allocator = allocator_for(memory, parent, host_id, size)
    pool_ids = fill(allocator, pools + holes, size)
    released = set(random.Random(seed).sample(range(len(pool_ids)), holes))
    for index, pool_id in enumerate(pool_ids):
        if index in released:
            allocator.release_pool(pool_id)
        elif gateways:
            allocator.request_address(pool_id, gateway=True)
    events = [encode_event(event) for event in memory._snapshot_events()]  # what FileStore._compact writes
    path.write_text(json.dumps({"format": FORMAT, "generation": 0, "events": events}, separators=(",", ":")))
    if journal_pairs:
        journal: list[str] = []
        apply_event = memory._commit

        def record(event: dict[str, Any]) -> None:  # what FileStore._commit does, minus the fdatasync
            journal.append(json.dumps(encode_event(event), separators=(",", ":")))
            apply_event(event)

        memory._commit = record  # type: ignore[method-assign]
        for _ in range(journal_pairs):
            allocator.release_pool(fill(allocator, 1, size)[0])
        Path(f"{path}.0.log").write_text("\n".join(journal) + "\n")
    if verify:
        check = FileStore(path)
        loaded = len(check.pools())
        check.close()
        if loaded != pools:
            raise RuntimeError(f"{path} loads {loaded} pools, not {pools}")
    return time.perf_counter() - started


def driver_holds(socket_path: Path, pools: int, parent: str, size: int = 28) -> None:
    """Check that a driver holds exactly the ``pools`` lowest /size subnets of ``parent``.

    A dynamic RequestPool must then get the next one, the ``pools``-th (counting from 0); it is released again.
    """
    network = ipaddress.ip_network(parent)
    expected = ipaddress.ip_network((int(network.network_address) + pools * (1 << (32 - size)), size))
    with UnixClient(socket_path) as client:
        reply = client.ok("IpamDriver.RequestPool", sized_pool(size))
        client.ok("IpamDriver.ReleasePool", protocol.release_pool(reply["PoolID"]))
    if reply["Pool"] != str(expected):
        raise RuntimeError(f"the driver on {socket_path} handed out {reply['Pool']}, not {expected}: it lost pools")
