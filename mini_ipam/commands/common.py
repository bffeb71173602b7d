"""What the ``mini-ipam`` commands share: their one kind of failure, the store, the settings, tables."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import stores
from mini_ipam.allocator import DEFAULT_PARENT4, DEFAULT_SIZE4, DEFAULT_SIZE6, Settings
from mini_ipam.presence import check_interval


class CommandError(Exception):
    """An expected failure of a command: printed as one sentence, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    """Allocator settings from the flags a command has."""
    parents4 = tuple(args.pool or (DEFAULT_PARENT4,))
    default4 = getattr(args, "default_size", DEFAULT_SIZE4)
    default6 = getattr(args, "default_size6", DEFAULT_SIZE6)
    for size, parents in ((default4, parents4), (default6, args.pool6 or ())):
        too_wide = [str(p) for p in parents if p.prefixlen > size]
        if too_wide:
            raise CommandError(f"default size /{size} does not fit in parent {', '.join(too_wide)}", 2)
    return Settings(
        parents4=parents4,
        parents6=tuple(args.pool6 or ()),
        default_size4=default4,
        default_size6=default6,
        host_id=args.host_id,
    )


def open_store(args: argparse.Namespace, *, read_only: bool = False, rebuild: bool = False) -> stores.Store:
    """The store ``--store`` names; ``read_only`` for commands that only look (a file store can then be
    read while its driver runs); ``rebuild`` for the driver, which keeps a record of its claims on a
    shared map and rebuilds the map if it is lost."""
    try:
        if rebuild:
            return stores.from_url(
                args.store,
                timeout=args.store_timeout,
                member=args.host_id,
                rebuild=True,
                record=args.local_record or None,
                recovery_window=recovery_window(args),
            )
        return stores.from_url(args.store, timeout=args.store_timeout, read_only=read_only, member=args.host_id)
    except (stores.StoreError, stores.ConfigurationError, OSError) as exc:
        raise CommandError(f"cannot open the store {stores.redact_url(args.store)}: {exc}") from None


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned text columns under ``header``."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def age(seconds: float) -> str:
    """A duration as its largest whole unit: ``3d``, ``5h``, ``2m``, ``40s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def recovery_window(args: argparse.Namespace) -> float:
    """``--recovery-window``, by default a little over one look at the map by every driver's heartbeat."""
    window: float | None = args.recovery_window
    return check_interval(args.host_ttl) + 2.0 if window is None else window
