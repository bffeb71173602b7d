"""Serving the app with waitress on the plugin's Unix socket.

The socket directory is created, a stale socket from a crashed run is replaced,
anything else at the path (a file, a symlink, a live driver's socket) is refused.
SIGTERM and SIGINT stop the server and remove the socket.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from flask import Flask
from waitress.server import create_server

log = logging.getLogger("mini_ipam.server")


class SocketInUse(RuntimeError):
    """The socket path is taken by something that must not be replaced."""


class _Stop(SystemExit):
    """Raised from a signal handler to leave waitress's loop.

    A SystemExit, because waitress's event loop swallows every other exception
    raised while it dispatches a socket event, and the signal may land right there.
    """


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` ready to bind: create its directory, remove a stale socket, refuse the rest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise SocketInUse(f"{path} is a symbolic link; refusing to replace it: remove it, or choose another --socket")
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketInUse(
            f"{path} exists and is not a socket; refusing to replace it: move it away, or choose another --socket"
        )
    if _socket_answers(path):
        raise SocketInUse(
            f"{path} is in use by a running process (another driver?): stop it first, or choose another --socket"
        )
    log.info("removing stale socket %s", path)
    path.unlink()


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SocketInUse(f"no group named {group!r} for the socket") from None


def _socket_answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise SocketInUse(
            f"cannot tell whether {path} is in use: {(exc.strerror or str(exc)).lower()}; run as root, or choose "
            "another --socket"
        ) from None
    finally:
        probe.close()
    return True


def serve(
    app: Flask,
    path: Path,
    *,
    threads: int = 8,
    mode: int = 0o660,
    group: str | None = None,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on the Unix socket ``path`` until SIGTERM or SIGINT.

    The socket gets ``mode`` and, when ``group`` is given, that group (its owner is
    whoever runs the driver: root, for Docker). ``on_listening`` runs once the socket
    listens (it starts the TCP listener, so that listener never answers for a driver
    whose plugin socket is not there).
    """
    gid = _group_id(group) if group else None
    prepare_socket_path(path)
    # The socket is created by bind() and chmod-ed after; the umask closes that window.
    umask = os.umask(0o777 & ~mode)
    try:
        server = create_server(
            app,
            unix_socket=str(path),
            unix_socket_perms=f"{mode:o}",
            threads=threads,
            ident="mini-ipam",
            clear_untrusted_proxy_headers=True,
            # Engine calls take milliseconds: idle or stalled connections are dropped after 10 s, and
            # many of them must not lock the engine out (waitress allows 100 by default).
            channel_timeout=10,
            connection_limit=1000,
            # The app refuses bodies over 64 KiB with a JSON error; waitress itself drops anything
            # over 16 MiB (plain text), so a client cannot make it buffer a gigabyte first.
            max_request_body_size=16 * 1024 * 1024,
        )
    finally:
        os.umask(umask)
    if gid is not None:
        os.chown(path, -1, gid)

    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("listening on %s", path)
    try:
        if on_listening is not None:
            on_listening()
        server.run()  # returns once a signal's SystemExit reached it
    except _Stop:
        pass  # the signal landed outside waitress's own handler
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            log.info("stopping on %s", signal.Signals(received[0]).name)
        server.close()
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        except FileNotFoundError:
            pass
        # Let threads finish replies already being written before the store is closed.
        server.task_dispatcher.shutdown(timeout=5)
