"""Host presence on a shared Redis: tell a twin (two live drivers with one host id) from a restart.

Claims are owned by a host id, and cloned machines often share a hostname, so two
live drivers could believe they are the same host and release each other's
networks. Each driver therefore keeps a heartbeat key::

    {P}:host:<host-id>     string, expires after ``ttl``: JSON {"instance", "pid", "node", "beat", "started"}
    {P}:twins:<host-id>    string, expires after ``ttl``: the instance that saw a twin, as a warning to the other

Every ``interval`` a driver runs one script that refreshes its key, or finds the key
held by another instance. Another instance whose ``beat`` counter moved since the
last look is alive: a twin, reported by both (the finder writes the ``twins`` key
the other reads). A key whose counter stands still belongs to a driver that died
(a restart after a crash); it is taken over once it expires and never reported.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import redis

log = logging.getLogger("mini_ipam.presence")

BEAT_SCRIPT = """
-- KEYS[1] the host's heartbeat key, KEYS[2] its twins key
-- ARGV[1] this instance's record (JSON, without "beat"), ARGV[2] ttl in milliseconds, ARGV[3] instance id
-- Returns {state, other record or "", twins marker or ""}; state is "mine" or "other".
local held = redis.call('GET', KEYS[1])
local twins = redis.call('GET', KEYS[2]) or ''
if held then
  local record = cjson.decode(held)
  if record.instance ~= ARGV[3] then
    return {'other', held, twins}
  end
  local mine = cjson.decode(ARGV[1])
  mine.beat = (record.beat or 0) + 1
  redis.call('SET', KEYS[1], cjson.encode(mine), 'PX', ARGV[2])
  return {'mine', '', twins}
end
local mine = cjson.decode(ARGV[1])
mine.beat = 1
redis.call('SET', KEYS[1], cjson.encode(mine), 'PX', ARGV[2])
return {'mine', '', twins}
"""


@dataclass(frozen=True)
class Twin:
    """Another live driver with the same host id."""

    instance: str
    pid: int
    node: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.node} (instance {self.instance})"


class HostPresence:
    """The heartbeat of one driver process; ``twin`` is set while a twin is alive."""

    def __init__(self, client: redis.Redis, prefix: str, host_id: str, ttl: float = 30.0) -> None:
        self.client = client
        self.host_id = host_id
        self.ttl = ttl
        self.instance = uuid.uuid4().hex
        self.twin: Twin | None = None
        self._keys = [f"{{{prefix}}}:host:{host_id}", f"{{{prefix}}}:twins:{host_id}"]
        self._record = json.dumps(
            {"instance": self.instance, "pid": os.getpid(), "node": socket.gethostname(), "started": time.time()}
        )
        self._script = client.register_script(BEAT_SCRIPT)
        self._seen: tuple[str, int] | None = None  # (instance, beat) of another holder, last look
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> Twin | None:
        """One heartbeat. Returns the twin if one is alive. Raises redis errors."""
        ttl_ms = str(int(self.ttl * 1000))
        state, other, twins = (
            v.decode() if isinstance(v, bytes) else v
            for v in self._script(keys=self._keys, args=[self._record, ttl_ms, self.instance])
        )
        twin: Twin | None = None
        if state == "other":
            record = json.loads(other)
            seen = (record["instance"], int(record.get("beat", 0)))
            if self._seen is not None and self._seen[0] == seen[0] and seen[1] > self._seen[1]:
                twin = Twin(record["instance"], int(record.get("pid", 0)), str(record.get("node", "?")))
                # Tell the holder too: it never sees our beats, only its own key.
                self.client.set(self._keys[1], self._record, px=int(self.ttl * 1000))
            self._seen = seen
        elif twins:
            record = json.loads(twins)
            if record["instance"] != self.instance:
                twin = Twin(record["instance"], int(record.get("pid", 0)), str(record.get("node", "?")))
        if twin is not None and self.twin is None:
            log.error(
                "another live mini-ipam uses host id %r on this store: %s. Both will act on the same claims; "
                "give every host its own --host-id",
                self.host_id,
                twin,
            )
        elif twin is None and self.twin is not None:
            log.warning("the other mini-ipam with host id %r is gone", self.host_id)
        self.twin = twin
        return twin

    def start(self, interval: float | None = None) -> None:
        """Beat every ``interval`` seconds (default ttl/3) in a daemon thread."""
        period = self.ttl / 3 if interval is None else interval

        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.beat()
                except (redis.RedisError, OSError) as exc:
                    log.debug("heartbeat failed: %s", exc)
                self._stop.wait(period)

        self._thread = threading.Thread(target=run, name="mini-ipam-presence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and give the key up, so a restart need not wait for it to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            held = self.client.get(self._keys[0])
            if held is not None and json.loads(held)["instance"] == self.instance:
                self.client.delete(self._keys[0])
        except (redis.RedisError, OSError, ValueError):
            pass
