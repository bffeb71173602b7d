"""The Redis deployments people run, started on loopback for tests: standalone, Sentinel, Cluster.

Each works with either server family (``tests.servers.REDIS``, ``VALKEY``),
polls for readiness, keeps its files under one short temporary directory, and
stops its processes by pid::

    with Standalone(family, AOF_ALWAYS) as server:       # .url, .unix_url, .kill(), .restart(), .flushall()
        ...
    with SentinelSetup(family) as setup:                 # .sentinel_addresses, SERVICE, .kill_primary(),
        ...                                              # .wait_for_failover(old), .bring_back(node)
    with ClusterSetup(family, replicas=1) as cluster:    # .seeds, .owner_of(slot), .fail_over(slot),
        ...                                              # .reshard(slot, target), .begin_migration(...)
"""

from tests.redis_deployments.base import Deployment
from tests.redis_deployments.cluster import ClusterNodeState, ClusterSetup
from tests.redis_deployments.node import HOST, Node, free_port
from tests.redis_deployments.sentinel import REPLICATION_USER, SERVICE, SentinelSetup
from tests.redis_deployments.standalone import (
    AOF_ALWAYS,
    AOF_EVERYSEC,
    NO_PERSISTENCE,
    RDB_ON_REQUEST,
    Persistence,
    Standalone,
)

__all__ = [
    "AOF_ALWAYS",
    "AOF_EVERYSEC",
    "HOST",
    "NO_PERSISTENCE",
    "RDB_ON_REQUEST",
    "REPLICATION_USER",
    "SERVICE",
    "ClusterNodeState",
    "ClusterSetup",
    "Deployment",
    "Node",
    "Persistence",
    "SentinelSetup",
    "Standalone",
    "free_port",
]
