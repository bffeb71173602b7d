"""What a Redis store learns of the server itself: which server it is, and how durable its data is.

* ``ServerWatch`` runs on every new connection (redis-py's ``redis_connect_func``):
  one ``INFO server`` tells the server's ``run_id``, which changes whenever the
  server restarted, or a failover put another server behind the same address.
  Such a server may have come back from an older copy of the map, or empty;
  the store is told, so that it can hold new blocks back until every member has
  had a look (see ``stores.recovery``).
* ``durability_warnings`` reads the settings that decide whether an acknowledged
  claim survives a restart and cannot be evicted (``CONFIG GET``), where the
  server allows it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

_RUN_ID = re.compile(rb"^run_id:(\w+)", re.MULTILINE)


class ServerWatch:
    """Notices, at each new connection, that the server behind the address is not the one it was."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.changed_at: float | None = None  # time.monotonic() of the last change seen
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str | None, str], None]] = []

    def listen(self, listener: Callable[[str | None, str], None]) -> None:
        """Call ``listener(old run id, new run id)`` whenever a new connection finds another server."""
        self._listeners.append(listener)

    def on_connect(self, connection: Any) -> None:
        """redis-py's connect hook: the usual handshake, then ``INFO server``.

        The first connection that finds another server fails (ConnectionError), so that the
        command it was made for is not sent: whoever listens has settled first (no new blocks
        for a while), and the next call's connection goes through.
        """
        connection.on_connect()
        connection.send_command("INFO", "server")
        info = connection.read_response()
        match = _RUN_ID.search(info if isinstance(info, bytes) else str(info).encode())
        if match is None:
            return  # not a server that says (a proxy): nothing to compare
        if self.seen(match.group(1).decode()):
            raise redis.ConnectionError(
                "the server behind this address changed (it restarted, or another took over); try again"
            )

    def seen(self, run_id: str) -> bool:
        """Record the run id one connection (or a script's reply) found; whether it is another server's."""
        with self._lock:
            old = self.run_id
            if old == run_id:
                return False
            self.run_id = run_id
            if old is not None:
                self.changed_at = time.monotonic()
        if old is None:
            return False
        for listener in self._listeners:
            listener(old, run_id)
        return True


def durability_warnings(client: redis.Redis) -> list[str]:
    """Why an acknowledged claim might not survive a restart of this server, or might be evicted.

    Empty when persistence and eviction settings keep every claim. When the server
    refuses ``CONFIG GET`` (managed services often do), says that it could not check.
    """
    found: dict[Any, Any] = {}
    try:
        for name in ("appendonly", "appendfsync", "save", "maxmemory-policy"):
            found.update(client.config_get(name))
    except redis.RedisError as exc:
        return [
            f"could not check the server's persistence and eviction settings ({exc}): make sure it keeps "
            "an append-only file and uses maxmemory-policy noeviction, or claims can be lost or evicted"
        ]
    settings = {_text(k): _text(v) for k, v in found.items() if v is not None}
    warnings: list[str] = []
    if settings.get("appendonly") != "yes":
        saving = settings.get("save", "")
        warnings.append(
            "appendonly is off: claims acknowledged since the last snapshot"
            + (f" (save {saving!r})" if saving else " (and snapshots are off too)")
            + " are lost if the server restarts"
        )
    elif settings.get("appendfsync") != "always":
        warnings.append(
            f"appendfsync is {settings.get('appendfsync')!r}: up to about a second of acknowledged claims is "
            "lost if the server's machine crashes (use ?wait_aof= for acknowledgements that wait for the fsync)"
        )
    policy = settings.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        warnings.append(f"maxmemory-policy is {policy!r}: the server may evict claims; use noeviction")
    return warnings


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
