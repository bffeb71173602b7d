"""``mini-ipam serve``: open the store and answer the engine on the plugin socket until stopped."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import stores
from mini_ipam import __version__
from mini_ipam.allocator import Allocator
from mini_ipam.app import create_app
from mini_ipam.commands.common import CommandError, open_store, settings_from, what_to_do
from mini_ipam.driver import Driver
from mini_ipam.errors import IpamError
from mini_ipam.metrics import Metrics
from mini_ipam.operations import STORE_ADVICE, Operations
from mini_ipam.operator_app import create_operator_app
from mini_ipam.operator_listener import ListenerError, OperatorListener
from mini_ipam.presence import HostPresence
from mini_ipam.server import SocketInUse
from mini_ipam.server import serve as run_server
from mini_ipam.timed_store import TimedStore

log = logging.getLogger("mini_ipam")


def serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; exit 0 then."""
    settings = settings_from(args)
    store = open_store(args, rebuild=True)
    answers = _attach(store, args)
    presence = _watch_for_twins(store, args.host_id, args.host_ttl)
    metrics = Metrics()
    allocator = Allocator(TimedStore(store, metrics), settings)
    if answers:  # else the IPv6 parents are read from the store once it answers
        try:
            log.info("IPv6 parents: %s", ", ".join(map(str, allocator.parents6)))
        except IpamError as exc:
            log.warning("IPv6 parents not known yet: %s", exc)
    shared = store if isinstance(store, stores.Rebuilding) else None
    operations = Operations(allocator, presence, shared, store_url=args.store)
    metrics.watch_health(operations.health)  # before create_app's watch_map: see watch_health
    app = create_app(Driver(allocator), operations=operations, metrics=metrics)
    log.info(
        "mini-ipam %s: store %s, parents %s, host id %s",
        __version__,
        stores.redact_url(args.store),
        ", ".join(map(str, settings.parents4)),
        args.host_id,
    )
    listener: OperatorListener | None = None
    try:
        listener = _operator_listener(args, operations, metrics)
        run_server(app, Path(args.socket), threads=args.threads, group=args.socket_group,
                   on_listening=listener.start if listener else None)  # fmt: skip
    except SocketInUse as exc:
        raise CommandError(f"cannot serve on {args.socket}: {exc}") from None
    except OSError as exc:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
        where = f" ({exc.filename})" if exc.filename and exc.filename != args.socket else ""
        advice = what_to_do(exc, "--socket PATH")
        raise CommandError(f"cannot serve on {args.socket}{where}: {reason}{advice}") from None
    finally:
        if listener is not None:
            listener.stop()  # before the store closes: a scrape may be reading it
        if presence is not None:
            presence.stop()
        try:
            store.close()
        except stores.StoreError as exc:  # stopping must still succeed when the store is away
            log.warning("the store did not close cleanly: %s", exc)
    return 0


def _operator_listener(args: argparse.Namespace, operations: Operations, metrics: Metrics) -> OperatorListener | None:
    """The ``--metrics-address`` listener, bound now (so a taken port stops start-up), or None."""
    if args.metrics_address is None:
        return None
    try:
        return OperatorListener(create_operator_app(operations, metrics), args.metrics_address)
    except ListenerError as exc:
        raise CommandError(str(exc)) from None


def _attach(store: stores.Store, args: argparse.Namespace) -> bool:
    """Whether the store answers now. On a shared map, adopt it, make it, or rebuild it from this driver's
    record, before serving. If the store does not answer, a warning: the driver serves anyway (the engine
    may be booting, or Redis), /healthz says why, and every request attaches first, so nothing is
    claimed before the map was checked."""
    try:
        if isinstance(store, stores.Rebuilding):
            store.start()
        else:
            store.ping()
    except stores.ConfigurationError as exc:
        store.close()
        raise CommandError(str(exc), 2) from None
    except stores.StoreError as exc:
        log.warning("the store %s does not answer yet (%s): %s", stores.redact_url(args.store), exc, STORE_ADVICE)
        return False
    if isinstance(store, stores.Rebuilding):
        for warning in store.health.warnings:
            log.warning("the store: %s", warning)
    return True


def _watch_for_twins(store: stores.Store, host_id: str, ttl: float) -> HostPresence | None:
    """On a shared store, keep a heartbeat: two live drivers with one host id are noticed, and each beat
    looks at the map, so an idle driver finds a lost map too."""
    if not store.traits.shared:
        return None
    checks = [store.check] if isinstance(store, stores.Rebuilding) else []
    presence = HostPresence(store, host_id, ttl=ttl, also=checks)
    presence.start()
    return presence
