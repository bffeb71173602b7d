"""``mini-ipam reconcile``: leaks between this host's claims and its Docker engine, found and fixed."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from mini_ipam.allocator import Allocator
from mini_ipam.cli import CommandError
from mini_ipam.commands import open_store, settings_from
from mini_ipam.commands.inspect import _age, _table
from mini_ipam.docker_engine import Engine, EngineError
from mini_ipam.errors import IpamError
from mini_ipam.reconciler import Reconciler
from stores import StoreError


def reconcile(args: argparse.Namespace) -> int:
    """Exit 0 when store and engine agree (or every difference was fixed), 1 otherwise."""
    if args.store.startswith("memory:"):
        raise CommandError("a memory:// store lives inside its driver; reconcile needs a file:// or Redis store")
    driver = args.driver or Path(args.socket).stem
    try:
        engine = Engine(args.docker)
    except EngineError as exc:
        raise CommandError(str(exc), 2) from None
    store = open_store(args)
    try:
        report = Reconciler(Allocator(store, settings_from(args)), engine, driver, args.grace).run(args.apply)
    except (EngineError, StoreError, IpamError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        print(json.dumps([asdict(f) for f in report.findings], indent=2))
    elif not report.findings:
        print(f"the store and the engine agree on every network of driver {driver!r}")
    else:
        rows = [
            [f.kind, f.pool_id, f.address or "-", f.network or "-",
             "-" if f.age_seconds is None else _age(f.age_seconds), f.action]
            for f in report.findings
        ]  # fmt: skip
        print(_table(["FINDING", "POOL", "ADDRESS", "NETWORK", "AGE", "ACTION"], rows))
    return 1 if report.unresolved else 0
