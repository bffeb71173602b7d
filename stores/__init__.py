"""Address-map stores: where mini-ipam keeps its claims.

A store holds one *address map* per address family: claimed subnets (blocks) that
never overlap, each carrying pools that hand out single addresses. Stores know
nothing of Docker; ``stores.base`` states the contract every backend keeps.

``from_url`` is the one door to a backend; ``traits_of`` tells what kind of store
a URL names and ``check_url`` whether its backend can use it, both without opening it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from stores.base import (
    SHARED,
    Address,
    AddressClaim,
    AnySubnet,
    Block,
    ClosedPool,
    ConfigurationError,
    CorruptState,
    Counting,
    ExactSubnet,
    Granted,
    Lease,
    LeaseState,
    MapHealth,
    MapIdentity,
    MapLost,
    MapRecovering,
    MapStatus,
    Network,
    NoFreeSubnet,
    Overlap,
    ParentUsage,
    PoolInfo,
    Rebuilding,
    Store,
    StoreError,
    StoreTraits,
    StoreUnavailable,
    UnknownPool,
    redact_url,
)
from stores.file import FileStore
from stores.memory import MemoryStore

__all__ = [
    "Address",
    "AddressClaim",
    "AnySubnet",
    "Block",
    "ClosedPool",
    "ConfigurationError",
    "CorruptState",
    "Counting",
    "ExactSubnet",
    "Granted",
    "Lease",
    "LeaseState",
    "MapHealth",
    "MapIdentity",
    "MapLost",
    "MapRecovering",
    "MapStatus",
    "Network",
    "NoFreeSubnet",
    "Overlap",
    "ParentUsage",
    "PoolInfo",
    "Rebuilding",
    "Store",
    "StoreError",
    "StoreTraits",
    "StoreUnavailable",
    "UnknownPool",
    "check_url",
    "from_url",
    "redact_url",
    "traits_of",
]

Opener = Callable[..., Store]


def _open_redis(
    url: str,
    *,
    rebuild: bool = False,
    record: str | None = None,
    recovery_window: float = 0.0,
    **options: Any,
) -> Store:
    # Imported here, not above: redis-py takes 0.1-0.3 s to import, which a driver on a file store
    # would pay at every start for nothing.
    from stores.record import Record
    from stores.recovery import RecoveringStore
    from stores.redis import RedisStore

    shared = RedisStore.from_url(url, recovery_window=recovery_window, **options)
    if not rebuild:
        return shared
    kept = Record(record) if record else None
    try:
        return RecoveringStore(shared, kept, window=recovery_window, map_name=f"{shared.where} prefix {shared.prefix}")
    except BaseException:
        if kept is not None:
            kept.close()
        raise


def _open_local(opener: Callable[..., Store]) -> Opener:
    """A single-host store's opener: the options about sharing a map do not apply to it."""

    def open_local(
        url: str, *, rebuild: bool = False, record: str | None = None, recovery_window: float = 0.0,
        member: str = "", **options: Any,
    ) -> Store:  # fmt: skip
        return opener(url, **options)

    return open_local


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")

_BACKENDS: dict[str, tuple[Opener, StoreTraits]] = {
    "memory": (_open_local(MemoryStore.from_url), MemoryStore.TRAITS),
    "file": (_open_local(FileStore.from_url), FileStore.TRAITS),
    **{scheme: (_open_redis, SHARED) for scheme in REDIS_SCHEMES},
}
"""URL scheme -> how to open it, and what kind of store it is."""


def _backend(url: str) -> tuple[Opener, StoreTraits]:
    scheme = urlsplit(url).scheme
    try:
        return _BACKENDS[scheme]
    except KeyError:
        raise ConfigurationError(
            f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}: use "
            + ", ".join(f"{name}://" for name in _BACKENDS)
        ) from None


def traits_of(url: str) -> StoreTraits:
    """What kind of store ``url`` names, without opening it; ConfigurationError for an unknown scheme."""
    return _backend(url)[1]


def check_url(url: str) -> None:
    """ConfigurationError unless the backend of ``url`` can use it, as far as can be told without opening it."""
    scheme = urlsplit(url).scheme
    _backend(url)
    if scheme == "memory":
        MemoryStore.check_url(url)
    elif scheme == "file":
        FileStore.path_of(url)
    else:
        from stores.redis.urls import is_seeds_url, split_seeds_url, split_url  # loads redis-py, as opening would

        split_seeds_url(url) if is_seeds_url(url) else split_url(url)


def from_url(url: str, **options: Any) -> Store:
    """Open the store a URL names.

    * ``memory://``: process memory only; lost when the process exits.
    * ``file:///abs/path.json``: memory, plus a journal written before every reply.
    * ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS),
      ``unix:///path/redis.sock?db=N``: a shared Redis; ``?prefix=NAME`` separates maps.
    * ``redis+sentinel://[user:password@]host1:26379[,host2:26379...]/SERVICE[/DB]``: the primary
      the sentinels name; ``redis+cluster://[user:password@]host1:port[,host2:port...]``: a Redis
      Cluster (any seed node that answers); ``rediss+...`` for TLS.

    Options every backend takes: ``timeout`` (seconds a round trip to a networked
    store may take; default 5) and ``read_only`` (open a single-writer store to read
    it while its driver runs; changes then raise). For a shared map: ``member`` (the
    name this process goes by on it), and with ``rebuild`` a ``stores.recovery``
    RecoveringStore that keeps this member's claims in the local ``record`` (a file
    path) and rebuilds a lost map, waiting ``recovery_window`` seconds for the other
    members; single-host stores ignore these. Raises ConfigurationError for an
    unknown scheme, a malformed URL or an option the backend cannot honour.
    """
    opener, _ = _backend(url)
    return opener(url, **options)
