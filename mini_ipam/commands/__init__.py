"""The ``mini-ipam`` commands, and what they share: opening the store, the parents."""

from __future__ import annotations

import argparse
import ipaddress
from urllib.parse import urlsplit

import stores
from mini_ipam.allocator import Settings
from mini_ipam.cli import DEFAULT_POOL, CommandError


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names."""
    if args.command == "serve":
        from mini_ipam.commands.serve import serve

        return serve(args)
    if args.command in ("ls", "plan"):
        from mini_ipam.commands.inspect import ls, plan

        return ls(args) if args.command == "ls" else plan(args)
    if args.command == "reconcile":
        from mini_ipam.commands.reconcile import reconcile

        return reconcile(args)
    raise CommandError(f"unknown command {args.command!r}", 2)  # pragma: no cover - argparse checks


def settings_from(args: argparse.Namespace) -> Settings:
    """Allocator settings from the flags a command has."""
    parents4 = tuple(args.pool or (ipaddress.IPv4Network(DEFAULT_POOL),))
    default4 = getattr(args, "default_size", 28)
    default6 = getattr(args, "default_size6", 64)
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


def open_store(args: argparse.Namespace, *, read_only: bool = False) -> stores.Store:
    """The store ``--store`` names; a file store opened ``read_only`` can be read while a driver runs."""
    try:
        if read_only and urlsplit(args.store).scheme == "file":
            from stores.file import FileStore

            return FileStore.from_url(args.store, read_only=True)
        return stores.from_url(args.store, timeout=args.store_timeout)
    except (stores.StoreError, stores.ConfigurationError, OSError) as exc:
        raise CommandError(f"cannot open the store {stores.redact_url(args.store)}: {exc}") from None
