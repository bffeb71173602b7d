"""The Redis store's room: the store (``store``), its Lua script (``scripts.lua``), the bit-string
codec between them (``codec``), its URLs (``urls``) and leases (``lease``)."""

from stores.redis.store import RedisStore
from stores.redis.urls import DEFAULT_PREFIX

__all__ = ["DEFAULT_PREFIX", "RedisStore"]
