"""Sentinel and Cluster store URLs: what they may say, and the clients they build, without a server."""

from __future__ import annotations

import time

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

import stores
from stores.base import ConfigurationError, StoreUnavailable
from stores.redis import RedisStore
from stores.redis.connect import ClusterWatch, LazyCluster
from stores.redis.server import ServerWatch
from stores.redis.urls import split_seeds_url
from tests.redis_deployments import free_port

# -- redis+sentinel:// --------------------------------------------------------------------


def test_a_sentinel_url_names_sentinels_service_database_and_both_passwords() -> None:
    seeds, prefix, durability = split_seeds_url(
        "redis+sentinel://app:s%40cret@s1.example,s2.example:26380,[fd00::1]:26381/cache/2"
        "?prefix=blue&sentinel_password=watch&sentinel_username=mon&wait_replicas=1"
    )
    assert seeds.kind == "sentinel"
    assert seeds.hosts == (("s1.example", 26379), ("s2.example", 26380), ("fd00::1", 26381))
    assert (seeds.service, seeds.db) == ("cache", 2)
    assert (seeds.username, seeds.password) == ("app", "s@cret")
    assert (seeds.sentinel_username, seeds.sentinel_password) == ("mon", "watch")
    assert prefix == "blue" and durability.replicas == 1
    assert seeds.where == "redis+sentinel://s1.example:26379,s2.example:26380,[fd00::1]:26381/cache/2"
    assert "cret" not in seeds.where and "watch" not in seeds.where


def test_a_sentinel_store_asks_the_sentinels_with_their_password_and_the_primary_with_its_own() -> None:
    store = RedisStore.from_url(
        "rediss+sentinel://:data-pw@127.0.0.1:1,127.0.0.1:2/mini-ipam?sentinel_password=watch-pw&ssl_cert_reqs=none",
        timeout=1.5,
    )
    pool = store.client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    kwargs = pool.connection_kwargs
    assert kwargs["password"] == "data-pw" and kwargs["socket_timeout"] == 1.5
    assert kwargs["retry"].get_retries() == 0
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    for sentinel in sentinels:
        sentinel_kwargs = sentinel.connection_pool.connection_kwargs
        assert sentinel_kwargs["password"] == "watch-pw"
        assert sentinel_kwargs["socket_connect_timeout"] == 1.5
        assert sentinel_kwargs["retry"].get_retries() == 0
    assert store.where == "rediss+sentinel://127.0.0.1:1,127.0.0.1:2/mini-ipam"


def test_no_sentinel_answering_is_a_fast_clear_unavailability() -> None:
    ports = [free_port(), free_port()]
    store = RedisStore.from_url(f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/svc", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="no sentinel of redis\\+sentinel://.* names a primary now"):
        store.ping()
    assert time.monotonic() - started < 1.0
    store.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://s1:26379", "must name the service"),
        ("redis+sentinel://s1:26379/", "must name the service"),
        ("redis+sentinel://s1:26379/svc/x", "must be a number"),
        ("redis+sentinel://s1:26379/svc/1/2", "must be a number"),
        ("redis+sentinel://s1:26379/svc?db=1", "name the database in the path"),
        ("redis+sentinel://s1:26379/svc?ssl_ca_certs=/ca.pem", "TLS options need rediss\\+sentinel://"),
        ("redis+sentinel://s1:26379/svc?sentinel_password=", "is empty"),
        ("redis+sentinel://s1:26379/svc?socket_timeout=3", "unknown option 'socket_timeout'"),
        ("redis+sentinel://s1:26379,s1:26379/svc", "named twice"),
        ("redis+sentinel://s1:99999/svc", "not a port number"),
        ("redis+sentinel://s1:26379,,s2/svc", "empty host"),
        ("redis+sentinel://s1/svc?prefix={x}", "not usable"),
        ("redis+sentinel://s1/svc#frag", "#fragment"),
        ("rediss+sentinel://s1/svc?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
    ],
)
def test_a_sentinel_url_that_cannot_work_is_refused_before_any_connection(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        stores.check_url(url)
    with pytest.raises(ConfigurationError, match=complaint):
        RedisStore.from_url(url)


# -- redis+cluster:// --------------------------------------------------------------------


def test_a_cluster_url_names_seed_nodes_and_credentials() -> None:
    seeds, prefix, _ = split_seeds_url("redis+cluster://u:p@n1:7000,n2:7001,n3?prefix=green")
    assert seeds.kind == "cluster"
    assert seeds.hosts == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert (seeds.username, seeds.password, prefix) == ("u", "p", "green")
    assert seeds.where == "redis+cluster://n1:7000,n2:7001,n3:6379"
    assert split_seeds_url("redis+cluster://n1:7000/0")[0].db == 0


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis+cluster://n1:7000?db=0", "a cluster has one"),
        ("redis+cluster://n1:7000?sentinel_password=x", "unknown option 'sentinel_password'"),
        ("redis+cluster://n1:7000?ssl_certfile=/c.pem", "TLS options need rediss\\+cluster://"),
        ("redis+cluster://n1:x", "not a port number"),
        ("redis+cluster://n1:7000?wait_timeout=5s", "wait_timeout needs"),
    ],
)
def test_a_cluster_url_that_cannot_work_is_refused_before_any_connection(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        stores.check_url(url)


def test_a_cluster_store_opens_without_a_connection_and_fails_its_first_call_fast() -> None:
    port = free_port()
    store = RedisStore.from_url(f"redis+cluster://:pw@127.0.0.1:{port}?prefix=p", timeout=1.0)
    client = store.client
    assert isinstance(client, LazyCluster)
    assert client.connection_kwargs["password"] == "pw" and client.connection_kwargs["socket_timeout"] == 1.0
    assert store.where == f"redis+cluster://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=f"could not reach redis at redis\\+cluster://127.0.0.1:{port}") as away:
        store.ping()
    assert time.monotonic() - started < 1.0
    assert "pw" not in str(away.value)
    store.close()


def test_a_cluster_store_url_is_a_shared_store() -> None:
    assert stores.traits_of("redis+cluster://n1:7000").shared
    assert stores.traits_of("rediss+sentinel://s1/svc").shared


def test_a_lazy_cluster_that_cannot_be_made_raises_a_redis_error() -> None:
    seeds, _, _ = split_seeds_url(f"redis+cluster://127.0.0.1:{free_port()}")
    lazy = LazyCluster(seeds, 0.5, ClusterWatch(ServerWatch(), "{p}:settings"))
    with pytest.raises(redis.ConnectionError, match="no seed node answered"):
        lazy.ping()
