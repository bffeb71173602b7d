"""The Redis store's room: the store (``store``), its Lua script (``scripts.lua``), the bit-string
codec between them (``codec``), its URLs (``urls``: one server, Sentinel, Cluster), how each URL form
is reached (``connect``), what it learns of the server (``server``) and leases (``lease``)."""

from stores.redis.store import RedisStore
from stores.redis.urls import DEFAULT_PREFIX

__all__ = ["DEFAULT_PREFIX", "RedisStore"]
