"""The running driver's own settings, for the commands that read its map (``ls``, ``plan``, ``reconcile``).

Under systemd the driver reads ``/etc/default/mini-ipam``; an admin's shell does not. So
these commands ask the driver on ``--socket`` (``GET /settings``) which store and parents
it uses. A setting the shell left at its default takes the driver's value; one the shell
gave (flag or variable) is kept, and a note on stderr says that the driver's differs.
Without a driver on the socket nothing changes. A store URL whose password the driver
does not tell (it never does) cannot be taken over: the note says to give it.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

import stores
from mini_ipam.unix_http import UnixHTTPError, get_json

ASK_TIMEOUT = 1.0
"""Seconds to wait for the driver's answer: a command must not hang on a stuck driver."""


def ask_driver(socket_path: str) -> dict[str, Any] | None:
    """The settings of the driver on ``socket_path``, or None when none answers there."""
    try:
        status, body = get_json(socket_path, "/settings", timeout=ASK_TIMEOUT)
    except (UnixHTTPError, OSError):
        return None
    if status != 200 or not isinstance(body, dict) or "pool" not in body:
        return None
    return body


def follow_driver(args: argparse.Namespace) -> None:
    """Take the running driver's store and parents where the shell left them at their defaults."""
    driver = ask_driver(args.socket)
    if driver is None:
        return
    where = f"the driver on {args.socket}"
    sources = getattr(args, "sources", {})
    _follow_store(args, driver, where, sources)
    for dest, option in (("pool", "--pool"), ("pool6", "--pool6")):
        theirs = [ipaddress.ip_network(text) for text in driver.get(dest, [])]
        ours = list(getattr(args, dest))
        if theirs == ours or (dest == "pool6" and not theirs):
            continue
        if _is_default(sources, dest):
            setattr(args, dest, theirs)
            _note(args, f"using {where}'s {option} {_join(theirs)}")
        else:
            _note(args, f"{where} uses {option} {_join(theirs) or '(none)'}; this uses {_join(ours)} ({sources[dest]})")


def _follow_store(args: argparse.Namespace, driver: dict[str, Any], where: str, sources: dict[str, Any]) -> None:
    theirs = str(driver.get("store", ""))
    if not theirs or theirs == stores.redact_url(args.store):
        return
    if not _is_default(sources, "store"):
        _note(args, f"{where} uses the store {theirs}; this reads {stores.redact_url(args.store)} ({sources['store']})")
    elif theirs != stores.redact_url(theirs) or "***" in theirs:
        _note(args, f"{where} uses the store {theirs}: give its URL with --store or MINI_IPAM_STORE to read it")
    else:
        args.store = theirs
        _note(args, f"using {where}'s store {theirs}")


def _is_default(sources: dict[str, Any], dest: str) -> bool:
    source = sources.get(dest)
    return source is None or source.kind == "default"


def _join(networks: list[Any]) -> str:
    return ", ".join(map(str, networks))


def _note(args: argparse.Namespace, text: str) -> None:
    print(f"mini-ipam {args.command}: note: {text}", file=sys.stderr)
