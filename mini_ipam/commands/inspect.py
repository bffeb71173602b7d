"""``mini-ipam ls`` and ``mini-ipam plan``: what the map holds, and what still fits."""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from mini_ipam.allocator import Allocator
from mini_ipam.cli import CommandError
from mini_ipam.commands import open_store, settings_from
from mini_ipam.operations import Operations
from mini_ipam.pool_id import SMALLEST


def _inventory(args: argparse.Namespace) -> dict[str, Any]:
    """The map as JSON: read from the store, or, for memory://, asked of the running driver."""
    if urlsplit(args.store).scheme == "memory":
        return _ask_driver(args.socket)
    store = open_store(args, read_only=True)
    try:
        return Operations(Allocator(store, settings_from(args))).inventory().to_json()
    except Exception as exc:  # the store's own errors, told in one sentence
        raise CommandError(f"cannot read the store: {exc}") from None
    finally:
        store.close()


def _ask_driver(socket_path: str) -> dict[str, Any]:
    from mini_ipam.unix_http import UnixHTTPError, get_json

    try:
        status, body = get_json(socket_path, "/inventory")
    except UnixHTTPError as exc:
        raise CommandError(f"a memory:// store lives in its driver, and the driver on {socket_path} {exc}") from None
    if status != 200 or not isinstance(body, dict):
        raise CommandError(f"the driver on {socket_path} answered {status}: {body}")
    return body


def ls(args: argparse.Namespace) -> int:
    """Print usage per parent and every pool."""
    inventory = _inventory(args)
    if args.json:
        print(json.dumps(inventory, indent=2))
        return 0
    print(_table(
        ["PARENT", "USED", "FREE", "LARGEST FREE", "SUBNETS"],
        [[p["parent"], p["used_addresses"], p["free_addresses"], p["largest_free"] or "-",
          sum(p["blocks_by_size"].values())] for p in inventory["parents"]],
    ))  # fmt: skip
    print()
    print(_table(
        ["POOL", "SPACE", "OWNER", "AGE", "GATEWAY", "IN USE", "ADDRESSES"],
        [[p["pool_id"], p["space"] + (" (copy)" if p["copy_of_global"] else ""), p["owner"],
          _age(p["age_seconds"]), p["gateway"] or "-", len(p["addresses"]), _shorten(p["addresses"])]
         for p in inventory["pools"]],
    ))  # fmt: skip
    return 0


def plan(args: argparse.Namespace) -> int:
    """Print how many more /size fit, and exit 1 when --count of them do not."""
    size = args.size
    version = 6 if args.v6 else 4
    if size > SMALLEST[version]:
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
        print(_table(["PARENT", f"/{size} THAT FIT", "FREE BLOCKS"], rows))
        verdict = "" if args.count is None else (f": {args.count} fit" if total >= args.count else
                                                 f": {args.count} do NOT fit")  # fmt: skip
        print(f"\n{total} more /{size} fit{verdict}")
    return 0 if args.count is None or total >= args.count else 1


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _shorten(addresses: Sequence[str], keep: int = 4) -> str:
    if len(addresses) <= keep:
        return " ".join(addresses) or "-"
    return " ".join(addresses[:keep]) + f" (+{len(addresses) - keep})"
