"""``mini-ipam reconcile``: leaks between this host's claims and its Docker engine, found and fixed."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import stores
from mini_ipam.allocator import Allocator
from mini_ipam.claims import ClaimBook, ClaimRefused, DriverClaims, StoreClaims
from mini_ipam.commands.common import CommandError, age, open_store, settings_from, table
from mini_ipam.commands.driver_settings import follow_driver
from mini_ipam.docker_engine import Engine, EngineError
from mini_ipam.errors import IpamError
from mini_ipam.reconciler import Reconciler
from mini_ipam.unix_http import plugin_answers
from stores import Store, StoreError


def reconcile(args: argparse.Namespace) -> int:
    """Exit 0 when store and engine agree (or every difference was fixed), 1 otherwise."""
    follow_driver(args)
    driver = args.driver or Path(args.socket).stem
    try:
        engine = Engine(args.docker)
    except EngineError as exc:
        raise CommandError(str(exc), 2) from None
    store: Store | None = None
    claims: ClaimBook
    if _through_driver(args):
        claims = DriverClaims(args.socket, args.host_id)
    else:
        store = open_store(args)
        claims = StoreClaims(Allocator(store, settings_from(args)))
    try:
        report = Reconciler(claims, engine, driver, args.grace).run(args.apply)
    except (EngineError, StoreError, IpamError, ClaimRefused) as exc:
        raise CommandError(str(exc)) from None
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps([asdict(f) for f in report.findings], indent=2))
    elif not report.findings:
        print(f"the store and the engine agree on every network of driver {driver!r}")
    else:
        rows = [
            [f.kind, f.pool_id, f.address or "-", f.network or "-",
             "-" if f.age_seconds is None else age(f.age_seconds), f.action]
            for f in report.findings
        ]  # fmt: skip
        print(table(["FINDING", "POOL", "ADDRESS", "NETWORK", "AGE", "ACTION"], rows))
    return 1 if report.unresolved else 0


def _through_driver(args: argparse.Namespace) -> bool:
    """Whether claims must go through the running driver: it owns a memory or file store's state."""
    try:
        traits = stores.traits_of(args.store)
    except stores.ConfigurationError as exc:
        raise CommandError(str(exc), 2) from None
    return traits.in_process or (traits.single_writer and plugin_answers(args.socket))
