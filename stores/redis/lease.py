"""Leases on a shared Redis: an expiring record per name, held by one instance at a time.

Keys (``{P}`` is the map's hash tag, so a cluster keeps them in the map's slot)::

    {P}:host:<name>    string, expires after the ttl: the holder's JSON record, with
                       "instance" (who holds it) and "beat" (renewals so far)
    {P}:twins:<name>   string, expires after the ttl: a note another instance left for the holder
    {P}:alive          sorted set: name -> server time (s) of its holder's last renewal, so that
                       the hosts alive lately can be listed without scanning the keyspace

Renewing and giving up are one script each, so a renewal never overwrites another
instance's record and a release never deletes one (compare-and-delete, as
redis-py's own lock does).
"""

from __future__ import annotations

import json
from typing import Any

import redis

from stores.base import LeaseState

RENEW = """
-- KEYS[1] the lease, KEYS[2] its notes, KEYS[3] the names alive lately
-- ARGV[1] this instance's record (JSON, without "beat"), ARGV[2] ttl in milliseconds, ARGV[3] instance id,
-- ARGV[4] the lease's name
-- Returns {"mine" or "other", the other holder's record or "", the note or ""}.
local now = redis.call('TIME')[1]
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 86400)
local held = redis.call('GET', KEYS[1])
local note = redis.call('GET', KEYS[2]) or ''
local beat = 0
if held then
  local record = cjson.decode(held)
  if record.instance ~= ARGV[3] then
    return {'other', held, note}
  end
  beat = record.beat or 0
end
local mine = cjson.decode(ARGV[1])
mine.beat = beat + 1
redis.call('SET', KEYS[1], cjson.encode(mine), 'PX', ARGV[2])
return {'mine', '', note}
"""

RELEASE = """
-- KEYS[1] the lease; ARGV[1] this instance's id. Deletes the lease only if this instance holds it.
local held = redis.call('GET', KEYS[1])
if held and cjson.decode(held).instance == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A ``stores.base.Lease`` kept in Redis. Redis errors propagate as redis-py raises them."""

    def __init__(self, client: redis.Redis, keys: str, name: str, record: dict[str, Any], ttl: float) -> None:
        """``keys`` is the map's key head ``{P}:``; ``record`` must carry this instance's ``instance`` id."""
        self._client = client
        self._keys = [f"{keys}host:{name}", f"{keys}twins:{name}", f"{keys}alive"]
        self._name = name
        self._instance = str(record["instance"])
        self._record = json.dumps(record)
        self._ttl_ms = int(ttl * 1000)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def renew(self) -> LeaseState:
        state, other, note = (
            _text(value)
            for value in self._renew(keys=self._keys, args=[self._record, self._ttl_ms, self._instance, self._name])
        )
        return LeaseState(
            held=state == "mine",
            holder=json.loads(other) if other else None,
            note=json.loads(note) if note else None,
        )

    def post(self, note: dict[str, Any]) -> None:
        self._client.set(self._keys[1], json.dumps(note), px=self._ttl_ms)

    def release(self) -> None:
        self._release(keys=self._keys[:1], args=[self._instance])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
