"""How a Redis store reaches the server that holds its map, for every URL form.

* ``redis://``, ``rediss://``, ``unix://``: one server, a ``redis.Redis``.
* ``redis+sentinel://``: the primary the sentinels name, a ``redis.Redis`` from
  redis-py's ``Sentinel.master_for``. Every new connection asks a sentinel where
  the primary is; a connection to a primary that became a replica is dropped
  (redis-py's SentinelManagedConnection), so after a failover the next call goes
  to the new primary.
* ``redis+cluster://``: a ``LazyCluster``, redis-py's ``RedisCluster`` made at
  its first use (RedisCluster reads the topology from a seed node when made;
  a store must open without network I/O). RedisCluster follows MOVED and ASK,
  and re-reads the topology after a node fails, so after a failover the next
  call goes to the slot's new owner.

The whole map is one hash slot (every key is ``{P}:...``): every script call
passes a key of the map, so RedisCluster sends it to the slot's owner. What
RedisCluster would not send there by itself is pinned here: the WAIT / WAITAOF
that must follow a change on the same connection (``pipeline_at``), SCAN
(``scan_at``) and checks of the server (``node_at``).

Nothing is retried beyond following redirections: a failed connection or a
timeout is one failure of the call (so a call never takes much longer than the
store timeout), and the next call finds the new primary or owner.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder  # type: ignore[attr-defined]
from redis.exceptions import AskError, MovedError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from stores.redis import urls
from stores.redis.server import ServerWatch
from stores.redis.urls import Durability, Seeds

_RUN_ID = re.compile(rb"^run_id:(\w+)", re.MULTILINE)


@dataclass(frozen=True)
class Opened:
    """A client for a store URL, and what the URL said besides."""

    client: Any  # redis.Redis, or a LazyCluster (which behaves as a RedisCluster)
    where: str
    prefix: str
    durability: Durability


def anchor_of(prefix: str) -> str:
    """The key every script call names: it decides where RedisCluster sends the call."""
    return f"{{{prefix}}}:settings"


def open_url(url: str, *, timeout: float, watch: ServerWatch) -> Opened:
    """A client for ``url`` whose every connect and round trip is bounded by ``timeout``; no network I/O."""
    if urls.is_seeds_url(url):
        seeds, prefix, durability = urls.split_seeds_url(url)
        if seeds.kind == "sentinel":
            client: Any = _sentinel_client(seeds, timeout, watch)
        else:
            client = LazyCluster(seeds, timeout, ClusterWatch(watch, anchor_of(prefix)))
        return Opened(client, seeds.where, prefix, durability)
    client_url, prefix, durability = urls.split_url(url)
    client = redis.Redis.from_url(
        client_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        redis_connect_func=watch.on_connect,
    )
    return Opened(client, urls.where(client_url), prefix, durability)


def _tls_kwargs(seeds: Seeds) -> dict[str, Any]:
    if not seeds.ssl:
        return {}
    found: dict[str, Any] = {"ssl": True}
    for name, value in seeds.tls:
        found[name] = value.lower() in ("true", "yes", "1") if name == "ssl_check_hostname" else value
    return found


def _sentinel_client(seeds: Seeds, timeout: float, watch: ServerWatch) -> redis.Redis:
    """The primary the sentinels name, through redis-py's Sentinel; each new connection asks them."""
    bounded: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        **_tls_kwargs(seeds),
    }
    sentinel_kwargs = dict(bounded)
    if seeds.sentinel_password is not None:
        sentinel_kwargs["password"] = seeds.sentinel_password
    if seeds.sentinel_username is not None:
        sentinel_kwargs["username"] = seeds.sentinel_username
    sentinel = Sentinel(list(seeds.hosts), sentinel_kwargs=sentinel_kwargs, **bounded)  # type: ignore[no-untyped-call]
    return sentinel.master_for(  # type: ignore[no-any-return, no-untyped-call]
        seeds.service,
        db=seeds.db,
        username=seeds.username,
        password=seeds.password,
        redis_connect_func=watch.on_connect,
    )


class ClusterWatch:
    """``ServerWatch`` for a cluster: only connections to the node that serves the map's slot count.

    A cluster client connects to every node (to read the topology, or to follow a
    redirection); each has its own run id. At each new connection, one ``EXISTS``
    of the map's anchor tells whether this node serves the slot (another answers
    MOVED or ASK): only then is its run id compared, so a failover to a replica, or
    a restart of the owner, is seen as the server behind the map changing.
    """

    def __init__(self, watch: ServerWatch, anchor: str) -> None:
        self.watch = watch
        self.anchor = anchor

    def on_connect(self, connection: Any) -> None:
        """RedisCluster's connect hook (it has done the handshake already)."""
        connection.send_command("INFO", "server")
        info = connection.read_response()
        connection.send_command("EXISTS", self.anchor)
        try:
            connection.read_response()
        except redis.ResponseError:
            return  # MOVED, ASK, CLUSTERDOWN: not the node that serves the map now
        match = _RUN_ID.search(info if isinstance(info, bytes) else str(info).encode())
        if match is not None and self.watch.seen(match.group(1).decode()):
            raise redis.ConnectionError("the node that serves the map changed (a failover, or it restarted); try again")


class LazyCluster:
    """redis-py's RedisCluster, made at its first use; until then nothing is connected.

    Every attribute not defined here is the RedisCluster's. A failure to reach any
    seed node when making it is a ``redis.ConnectionError`` (RedisCluster raises
    RedisClusterException, which is no RedisError), and the next use tries again.
    """

    def __init__(self, seeds: Seeds, timeout: float, watch: ClusterWatch) -> None:
        self.seeds = seeds
        self.timeout = timeout
        self.watch = watch
        self._made: RedisCluster | None = None
        self._lock = threading.Lock()
        self.connection_kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "username": seeds.username,
            "password": seeds.password,
            **_tls_kwargs(seeds),
        }

    def cluster(self) -> RedisCluster:
        """The RedisCluster, made now if it was not yet."""
        made = self._made
        if made is not None:
            return made
        with self._lock:
            if self._made is None:
                try:
                    self._made = RedisCluster(
                        startup_nodes=[ClusterNode(host, port) for host, port in self.seeds.hosts],  # type: ignore[no-untyped-call]
                        retry=Retry(NoBackoff(), 0),
                        require_full_coverage=False,  # the map's slot may be served while others are not
                        redis_connect_func=self.watch.on_connect,
                        **self.connection_kwargs,
                    )
                except RedisClusterException as exc:
                    raise redis.ConnectionError(f"no seed node answered: {exc}") from exc
            return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster(), name)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """EVALSHA on the node that serves the script's first key; a MOVED is followed, an ASK is not.

        While a slot migrates, its keys are on two nodes. A script that RedisCluster
        sent on after an ASK would run on the importing node with the keys that have
        arrived there only, and could find part of the map missing: the map's tree,
        say, with its blocks then handed out again. So an ASK fails the call (the slot
        is on its way; the next call, once it has arrived, goes through). On the
        migrating node, a script that touches a key that has left fails in the server.
        """
        cluster = self.cluster()
        if not numkeys:
            return cluster.evalsha(sha, numkeys, *keys_and_args)
        pipe = _SlotPipeline(cluster, keys_and_args[0])
        pipe.execute_command("EVALSHA", sha, numkeys, *keys_and_args)
        return pipe.execute()[0]

    def get_encoder(self) -> Any:
        """The encoder scripts are hashed with (redis-py's default, which the cluster uses too)."""
        return Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]

    def register_script(self, script: str) -> Script:
        """A script run through this client: made without connecting."""
        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        """Close every node's connections, if the cluster was made."""
        if self._made is not None:
            self._made.close()


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (and follows its redirections)."""
    return isinstance(client, LazyCluster | RedisCluster)


def settings_of(client: Any) -> dict[str, Any]:
    """The connection settings a client was made with (for messages: timeout, password to scrub)."""
    if isinstance(client, LazyCluster):
        return client.connection_kwargs
    if isinstance(client, RedisCluster):
        return dict(client.nodes_manager.connection_kwargs)
    pool = getattr(client, "connection_pool", None)
    return dict(getattr(pool, "connection_kwargs", {}))


def disconnect(client: Any) -> None:
    """Close every connection of ``client`` (its pool's, or every cluster node's)."""
    if isinstance(client, LazyCluster | RedisCluster):
        client.close()
        return
    client.close()
    client.connection_pool.disconnect()


def _cluster_of(client: Any) -> RedisCluster | None:
    if isinstance(client, LazyCluster):
        return client.cluster()
    return client if isinstance(client, RedisCluster) else None


def node_at(client: Any, key: str) -> redis.Redis:
    """A client of the one server that serves ``key`` now: the client itself, unless it is a cluster's.

    On a cluster, one EXISTS of ``key`` through the cluster client first follows
    any MOVED, so that the node is the slot's owner as the cluster says now.
    """
    cluster = _cluster_of(client)
    if cluster is None:
        return client  # type: ignore[no-any-return]
    cluster.exists(key)
    return cluster.get_redis_connection(cluster.get_node_from_key(key))  # type: ignore[no-untyped-call]


def scan_at(client: Any, key: str, match: str, count: int) -> Iterator[Any]:
    """SCAN, on the server that serves ``key`` (on a cluster the other nodes hold none of the map).

    While the slot migrates, the keys are on two nodes and a SCAN of either misses
    some: ConnectionError (the slot is on its way), rather than a listing that lacks them.
    """
    node = node_at(client, key)
    cluster = _cluster_of(client)
    if cluster is not None:
        slot = cluster.keyslot(key)  # type: ignore[no-untyped-call]
        nodes = _text(node.execute_command("CLUSTER NODES"))  # type: ignore[no-untyped-call]
        mine = next((line for line in nodes.splitlines() if "myself" in line), "")
        if f"[{slot}->-" in mine or f"[{slot}-<-" in mine:
            raise redis.ConnectionError("the map's slot is being moved to another node; try again")
    return node.scan_iter(match=match, count=count)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pipeline_at(client: Any, key: str) -> redis.client.Pipeline:
    """A pipeline (no MULTI) whose commands all go over one connection to the server that serves ``key``.

    WAIT and WAITAOF count what their own connection wrote: they must follow the
    change on its connection. RedisCluster's pipeline would send them to some
    other node; this one sends everything to the slot's owner, and follows one
    MOVED by re-reading the topology and sending again.
    """
    cluster = _cluster_of(client)
    if cluster is None:
        return client.pipeline(transaction=False)  # type: ignore[no-any-return]
    return cast("redis.client.Pipeline", _SlotPipeline(cluster, key))


class _SlotPipeline:
    """The commands of ``pipeline_at`` on a cluster, sent to the node serving ``key`` when executed."""

    def __init__(self, cluster: RedisCluster, key: str) -> None:
        self._cluster = cluster
        self._key = key
        self._commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        """Queue one command."""
        self._commands.append(args)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands to the slot's owner; again after a MOVED (nothing ran then), at most twice."""
        for attempt in (1, 2, 3):
            node = self._cluster.get_node_from_key(self._key)  # type: ignore[no-untyped-call]
            pipe = self._cluster.get_redis_connection(node).pipeline(transaction=False)
            for command in self._commands:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            try:
                results = pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError):
                self._refresh(node)
                raise
            first = results[0] if results else None
            if isinstance(first, MovedError) and attempt < 3:
                if attempt == 1:
                    self._cluster.nodes_manager.move_slot(first)
                else:  # redirected again: the nodes disagree for a moment (a failover): read the topology
                    self._refresh(node)
                continue
            if isinstance(first, AskError):
                # The slot is being moved and this part of the map is on its way: nothing ran.
                raise redis.ConnectionError(f"the map's slot is being moved to {first.host}:{first.port}; try again")
            if raise_on_error:
                for result in results:
                    if isinstance(result, Exception):
                        raise result
            return list(results)
        raise redis.ConnectionError("the cluster kept moving the map's slot; try again")

    def _refresh(self, node: ClusterNode) -> None:
        """Re-read the topology after a node failed, as RedisCluster does for its own commands."""
        try:
            self._cluster.nodes_manager.initialize(last_failed_node_name=node.name)
        except (redis.RedisError, RedisClusterException):
            pass  # no node answers now: the next call reads it again
