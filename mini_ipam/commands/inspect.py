"""``mini-ipam ls`` and ``mini-ipam plan``: what the map holds, and what still fits.

``ls`` names the Docker network each pool serves when the local engine (``--docker``) can be
asked, as ``reconcile`` does; without an engine it lists the same, with no names.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import stores
from mini_ipam.allocator import Allocator
from mini_ipam.commands.common import CommandError, age, open_store, settings_from, table
from mini_ipam.network_names import name_of, names_by_pool
from mini_ipam.operations import Operations
from mini_ipam.pool_id import SMALLEST, too_small
from mini_ipam.unix_http import UnixHTTPError, get_json


def _inventory(args: argparse.Namespace) -> dict[str, Any]:
    """The map as JSON: read from the store, or, for a store that lives in its driver, asked of the driver."""
    try:
        in_process = stores.traits_of(args.store).in_process
    except stores.ConfigurationError as exc:
        raise CommandError(str(exc), 2) from None
    if in_process:
        return _ask_driver(args.socket)
    store = open_store(args, read_only=True)
    try:
        return Operations(Allocator(store, settings_from(args), reader=True)).inventory().to_json()
    except Exception as exc:  # the store's own errors, told in one sentence
        raise CommandError(f"cannot read the store: {exc}") from None
    finally:
        store.close()


def _ask_driver(socket_path: str) -> dict[str, Any]:
    try:
        status, body = get_json(socket_path, "/inventory")
    except UnixHTTPError as exc:
        raise CommandError(f"a memory:// store lives in its driver, and the driver on {socket_path} {exc}") from None
    if status != 200 or not isinstance(body, dict):
        raise CommandError(f"the driver on {socket_path} answered {status}: {body}")
    return body


def ls(args: argparse.Namespace) -> int:
    """Print usage per parent and every pool, with the name of the Docker network it serves where known."""
    inventory = _inventory(args)
    names = names_by_pool(args.docker, args.driver or Path(args.socket).stem)
    for pool in inventory["pools"]:
        pool["network"] = name_of(pool["pool_id"], names)
    if args.json:
        print(json.dumps(inventory, indent=2))
        return 0
    print(table(
        ["PARENT", "USED", "FREE", "LARGEST FREE", "SUBNETS"],
        [[p["parent"], p["used_addresses"], p["free_addresses"], p["largest_free"] or "-",
          sum(p["blocks_by_size"].values())] for p in inventory["parents"]],
    ))  # fmt: skip
    print()
    print(table(
        ["POOL", "NETWORK", "SPACE", "OWNER", "AGE", "GATEWAY", "IN USE", "ADDRESSES"],
        [[p["pool_id"], p["network"] or "-", p["space"] + (" (copy)" if p["copy_of_global"] else ""), p["owner"],
          age(p["age_seconds"]), p["gateway"] or "-", len(p["addresses"]), _shorten(p["addresses"])]
         for p in inventory["pools"]],
    ))  # fmt: skip
    return 0


def plan(args: argparse.Namespace) -> int:
    """Print how many more /size fit, and exit 1 when --count of them do not."""
    size = args.size
    version = 6 if args.v6 else 4
    if too_small(version, size):
        raise CommandError(f"/{size} is smaller than IPv{version} subnets go (/{SMALLEST[version]})", 2)
    inventory = _inventory(args)
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
