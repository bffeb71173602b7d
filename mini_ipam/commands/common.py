"""What the ``mini-ipam`` commands share: their one kind of failure, the store, the settings, tables."""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Sequence
from typing import Any

import stores
from mini_ipam.allocator import DEFAULT_SIZE4, DEFAULT_SIZE6, Settings
from mini_ipam.presence import check_interval
from stores.file import FileStore


class CommandError(Exception):
    """An expected failure of a command: printed as one sentence, exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def settings_from(args: argparse.Namespace) -> Settings:
    """Allocator settings from the settings a command has (read and checked by ``flags.resolve``)."""
    return Settings(
        parents4=tuple(args.pool),
        parents6=tuple(args.pool6),
        default_size4=getattr(args, "default_size", DEFAULT_SIZE4),
        default_size6=getattr(args, "default_size6", DEFAULT_SIZE6),
        host_id=args.host_id,
    )


def open_store(args: argparse.Namespace, *, read_only: bool = False, rebuild: bool = False) -> stores.Store:
    """The store ``--store`` names; ``read_only`` for commands that only look (a file store can then be
    read while its driver runs); ``rebuild`` for the driver, which keeps a record of its claims on a
    shared map and rebuilds the map if it is lost. A failure says what to do about it."""
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
    except stores.ConfigurationError as exc:
        raise CommandError(f"{source_of(args, 'store')}: {exc}", 2) from None
    except stores.CorruptState as exc:
        raise CommandError(f"{exc}. {recover_from_corrupt_state(args.store)}") from None
    except (stores.StoreError, OSError) as exc:
        advice = what_to_do(exc, "--store file:///PATH/state.json")
        raise CommandError(f"cannot open the store {stores.redact_url(args.store)}: {exc}{advice}") from None


def source_of(args: argparse.Namespace, dest: str) -> str:
    """Where the setting ``dest`` came from (``flag --store``, ``environment variable MINI_IPAM_STORE``...)."""
    sources = getattr(args, "sources", {})
    return str(sources[dest]) if dest in sources else f"--{dest.replace('_', '-')}"


def recover_from_corrupt_state(url: str) -> str:
    """How to start again from a state that cannot be parsed."""
    if not url.startswith("file:"):
        return "The store is left as it is: look at the keys the message names"
    path = FileStore.path_of(url)
    return (
        f"The state is left as it is. To start again: stop the driver, move {path} and its journals "
        f"({path}.*.log) aside, run `mini-ipam reconcile --apply` (with the driver stopped it writes a new state "
        "file holding what the engine uses), then start the driver"
    )


def what_to_do(exc: BaseException, choose: str) -> str:
    """Advice for a failure whose cause is an OSError (``exc`` or its cause), as ``: ...``; empty if none.

    ``choose`` is the flag to name when another path would do (``--socket PATH``).
    """
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    code = cause.errno if isinstance(cause, OSError) else None
    if code in (errno.EACCES, errno.EPERM):
        if os.geteuid() != 0:
            return f": run as root, or choose a {choose} you can write"
        return f": check its owner and mode, and what confines this process (AppArmor, SELinux), or choose a {choose}"
    if code == errno.EROFS:
        return f": choose a {choose} on a file system that can be written"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return ": free some space there, then start again"
    if code == errno.EISDIR:
        return f": a directory is in the way; choose a {choose} that names a file"
    return ""


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
