"""``mini-ipam ls`` and ``mini-ipam plan``: what the map holds, and what still fits.

``ls`` names the Docker network each pool serves when the local engine (``--docker``) can be
asked, as ``reconcile`` does; without an engine it lists the same, with no names.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import stores
from mini_ipam.allocator import Allocator
from mini_ipam.commands.common import CommandError, age, open_store, settings_from, table
from mini_ipam.commands.driver_settings import follow_driver
from mini_ipam.inventory import PoolFilter, inventory_json, list_pools
from mini_ipam.network_names import name_of, names_by_pool
from mini_ipam.operations import Operations
from mini_ipam.pool_id import SMALLEST, too_small
from mini_ipam.unix_http import UnixHTTPError, get_json
from stores import StoreError


def _free_blocks(args: argparse.Namespace) -> dict[str, Any]:
    """The parents with their free blocks per size, without the pools."""
    if _in_process(args):
        return _ask_driver(args.socket, "/inventory?pools=0&free_blocks=1")
    with _operations(args) as operations:
        return {"parents": [view.to_json() for view in operations.parent_views(free_blocks=True)]}


def _in_process(args: argparse.Namespace) -> bool:
    """Whether the store lives in its driver (memory://), so that only the driver can say what it holds."""
    try:
        return stores.traits_of(args.store).in_process
    except stores.ConfigurationError as exc:
        raise CommandError(str(exc), 2) from None


@contextmanager
def _operations(args: argparse.Namespace) -> Iterator[Operations]:
    """Operations on the store, opened read-only, with the store's errors told in one sentence."""
    store = open_store(args, read_only=True)
    try:
        yield Operations(Allocator(store, settings_from(args), reader=True))
    except StoreError as exc:
        raise CommandError(f"cannot read the store: {exc}") from None
    finally:
        store.close()


def _ask_driver(socket_path: str, path: str) -> dict[str, Any]:
    try:
        status, body = get_json(socket_path, path)
    except UnixHTTPError as exc:
        raise CommandError(f"a memory:// store lives in its driver, and the driver on {socket_path} {exc}") from None
    if status != 200 or not isinstance(body, dict):
        raise CommandError(f"the driver on {socket_path} answered {status}: {body}")
    if "error" in body:
        raise CommandError(f"the driver on {socket_path} could not finish the listing: {body['error']}")
    return body


def _listing(args: argparse.Namespace) -> Iterator[str]:
    """What ``ls`` shows, as JSON text in pieces: the pools stream as they are read."""
    only = PoolFilter(args.parent, args.owner, args.limit)
    names = {} if args.summary else names_by_pool(args.docker, args.driver or Path(args.socket).stem)

    def name_it(pool: dict[str, Any]) -> None:
        pool["network"] = name_of(pool["pool_id"], names)

    if _in_process(args):
        query = {"pools": "0" if args.summary else "1"}
        query |= {k: str(v) for k, v in (("parent", args.parent), ("owner", args.owner), ("limit", args.limit)) if v}
        inventory = _ask_driver(args.socket, "/inventory?" + urlencode(query))
        for pool in inventory["pools"]:
            name_it(pool)
        yield json.dumps(inventory)
        return
    with _operations(args) as operations:
        parents = operations.parent_views(free_blocks=False)
        pools = iter(()) if args.summary else list_pools(operations.allocator.store, only, _progress())
        yield from inventory_json(parents, pools, time.time(), name_it)


def ls(args: argparse.Namespace) -> int:
    """Print usage per parent and the pools (``--summary``: the parents only), each pool with the name of the
    Docker network it serves where the local engine tells it."""
    follow_driver(args)
    if args.json:
        for piece in _listing(args):
            sys.stdout.write(piece)
        sys.stdout.write("\n")
        return 0
    inventory = json.loads("".join(_listing(args)))
    if "error" in inventory:
        raise CommandError(f"cannot read the store: {inventory['error']}")
    print(table(
        ["PARENT", "USED", "FREE", "LARGEST FREE", "SUBNETS"],
        [[p["parent"], p["used_addresses"], p["free_addresses"], p["largest_free"] or "-",
          sum(p["blocks_by_size"].values())] for p in inventory["parents"]],
    ))  # fmt: skip
    if args.summary:
        return 0
    print()
    print(table(
        ["POOL", "NETWORK", "SPACE", "OWNER", "AGE", "GATEWAY", "IN USE", "ADDRESSES"],
        [[p["pool_id"], p["network"] or "-", p["space"] + (" (copy)" if p["copy_of_global"] else ""), p["owner"],
          age(p["age_seconds"]), p["gateway"] or "-", len(p["addresses"]), _shorten(p["addresses"])]
         for p in inventory["pools"]],
    ))  # fmt: skip
    return 0


def _progress(every: int = 500) -> Callable[[int, int], None] | None:
    """On a terminal, a count of the pools read so far on stderr (a big map takes a while)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if total >= every and (done % every == 0 or done == total):
            sys.stderr.write(f"\rreading pools: {done} of {total}" + ("\n" if done == total else ""))
            sys.stderr.flush()

    return show


def plan(args: argparse.Namespace) -> int:
    """Print how many more /size fit, and exit 1 when --count of them do not."""
    follow_driver(args)
    size = args.size
    version = 6 if args.v6 else 4
    if too_small(version, size):
        raise CommandError(f"/{size} is smaller than IPv{version} subnets go (/{SMALLEST[version]})", 2)
    inventory = _free_blocks(args)
    rows = []
    total = 0
    for parent in inventory["parents"]:
        if ipaddress.ip_network(parent["parent"]).version != version:
            continue
        free = {int(k.lstrip("/")): v for k, v in parent["free_blocks"].items()}
        fits = sum(count << (size - length) for length, count in free.items() if length <= size)
        total += fits
        blocks = ", ".join(f"{count}x /{length}" for length, count in sorted(free.items())) or "none"
        rows.append([parent["parent"], fits, blocks])
    if args.json:
        print(json.dumps({"size": size, "fit": total, "count": args.count,
                          "parents": [dict(zip(("parent", "fit", "free_blocks"), row, strict=True)) for row in rows]},
                         indent=2))  # fmt: skip
    else:
        print(table(["PARENT", f"/{size} THAT FIT", "FREE BLOCKS"], rows))
        verdict = "" if args.count is None else (f": {args.count} fit" if total >= args.count else
                                                 f": {args.count} do NOT fit")  # fmt: skip
        print(f"\n{total} more /{size} fit{verdict}")
    return 0 if args.count is None or total >= args.count else 1


def _shorten(addresses: Sequence[str], keep: int = 4) -> str:
    if len(addresses) <= keep:
        return " ".join(addresses) or "-"
    return " ".join(addresses[:keep]) + f" (+{len(addresses) - keep})"
