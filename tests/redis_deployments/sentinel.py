"""Sentinel: one primary, its replicas and three sentinels on loopback, with the faults a failover needs.

Every data node has an ACL user ``replicator`` that replicas authenticate as
(``masteruser``/``masterauth``), so a replica's link can be cut on purpose
(``pause_replication``: the replica's password is made wrong and its link
dropped) while the replica itself keeps answering the sentinels, which still
count it as a good candidate: promoted after a kill -9 of the primary, it lacks
every write made during the pause. Clients and sentinels use the default user.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from tests.redis_deployments.base import Deployment
from tests.redis_deployments.node import HOST, Node
from tests.redis_deployments.standalone import NO_PERSISTENCE, Persistence
from tests.servers import ServerFamily, wait_until

SERVICE = "mini-ipam"
"""The name the sentinels monitor the primary under."""

REPLICATION_USER = "replicator"
_REPLICATION_PASSWORD = "replication-secret"
_WRONG_PASSWORD = "a-wrong-password"


class SentinelSetup(Deployment):
    """A primary, ``replicas`` replicas (default 1) and ``sentinels`` sentinels (default 3, quorum 2).

    ``down_after`` (ms) is how long the primary must be silent before a sentinel
    thinks it down; ``failover_timeout`` (ms) bounds a failover (and delays a
    retry). ``persistence`` applies to every data node. ``sentinel_password``
    makes the sentinels want a password of their own (``requirepass``: clients
    pass it in ``sentinel_kwargs``); the data nodes still want none.

    ``start`` returns once every replica is in sync and every sentinel knows the
    primary, every replica and every other sentinel.
    """

    def __init__(
        self,
        family: ServerFamily,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after: int = 1000,
        failover_timeout: int = 3000,
        persistence: Persistence = NO_PERSISTENCE,
        sentinel_password: str | None = None,
    ) -> None:
        super().__init__(family)
        self.quorum = quorum
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        common = [
            *persistence.settings(),
            f"user {REPLICATION_USER} on >{_REPLICATION_PASSWORD} ~* &* +@all",
            f"masteruser {REPLICATION_USER}",
            f"masterauth {_REPLICATION_PASSWORD}",
            "repl-diskless-sync-delay 0",  # a replica (re)syncs at once, not after 5 s
        ]
        self.data_nodes = [self.add_node("p", settings=common)]
        self.data_nodes += [self.add_node(f"r{number}", settings=common) for number in range(replicas)]
        self.sentinels = [
            self.add_node(f"s{number}", sentinel=True, password=sentinel_password) for number in range(sentinels)
        ]

    # -- start --------------------------------------------------------------------

    def start(self) -> None:
        primary, *replicas = self.data_nodes
        primary.start()
        for replica in replicas:
            replica.settings.append(f"replicaof {HOST} {primary.port}")
            replica.start()
        self.wait_in_sync(primary, replicas)
        for sentinel in self.sentinels:
            sentinel.settings += [
                f"sentinel monitor {SERVICE} {HOST} {primary.port} {self.quorum}",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after}",
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout}",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]
            sentinel.start()
        wait_until(self._sentinels_see_everything, timeout=30, what="every sentinel to know the whole setup")

    def _sentinels_see_everything(self) -> bool:
        for sentinel in self.sentinels:
            state = self._master_state(sentinel)
            if state is None or state.get("flags") != "master":
                return False
            if int(state["num-slaves"]) != len(self.data_nodes) - 1:
                return False
            if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                return False
        return True

    def _master_state(self, sentinel: Node) -> dict[str, str] | None:
        try:
            reply = sentinel.call("SENTINEL", "MASTER", SERVICE, timeout=1)
        except (redis.RedisError, OSError):
            return None
        return dict(zip(reply[::2], reply[1::2], strict=True))

    # -- where things are -------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel, as ``redis.sentinel.Sentinel`` takes them."""
        return [sentinel.address for sentinel in self.sentinels]

    def reported_primaries(self) -> dict[str, tuple[str, int] | None]:
        """What each live sentinel answers to ``SENTINEL get-master-addr-by-name`` (None: no answer)."""
        found: dict[str, tuple[str, int] | None] = {}
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                host, port = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE, timeout=1)
                found[sentinel.name] = (str(host), int(port))
            except (redis.RedisError, OSError, TypeError, ValueError):
                found[sentinel.name] = None
        return found

    def primary_address(self) -> tuple[str, int]:
        """The primary's address, as every live sentinel reports it (they must agree)."""
        reported = set(self.reported_primaries().values())
        if len(reported) != 1 or None in reported:
            raise AssertionError(f"the sentinels do not agree on the primary: {self.reported_primaries()}")
        (address,) = reported
        assert address is not None
        return address

    @property
    def primary(self) -> Node:
        """The node the sentinels report as the primary."""
        return self.node_at(self.primary_address())

    @property
    def replicas(self) -> list[Node]:
        """The data nodes other than the reported primary."""
        primary = self.primary
        return [node for node in self.data_nodes if node is not primary]

    # -- faults --------------------------------------------------------------------------

    def kill_primary(self) -> Node:
        """kill -9 the current primary; returns it (``bring_back`` restarts it)."""
        primary = self.primary
        primary.kill()
        return primary

    def pause_replication(self, replica: Node) -> None:
        """Cut ``replica``'s link to the primary, and keep it cut: writes from now on do not reach it.

        The replica answers the sentinels all the while, and stays a candidate
        for promotion while its link has been down less than about ten times
        ``down_after``.
        """
        replica.call("CONFIG", "SET", "masterauth", _WRONG_PASSWORD)
        replica.call("CLIENT", "KILL", "TYPE", "master")
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "down",
            what=f"the link of {replica} to go down",
        )

    def resume_replication(self, replica: Node) -> None:
        """Let ``replica`` reconnect (it resynchronises from whoever is its primary by then).

        The config file is rewritten too: a sentinel rewrote it with the wrong
        password when it reconfigured the node, and a restart would read that.
        """
        replica.call("CONFIG", "SET", "masterauth", _REPLICATION_PASSWORD)
        replica.call("CONFIG", "REWRITE")

    def wait_for_failover(self, old: tuple[str, int], timeout: float = 60) -> Node:
        """Wait until every live sentinel names a primary other than ``old`` and that node is a writable primary.

        Returns the new primary.
        """
        found: list[Node] = []

        def switched() -> bool:
            reported = set(self.reported_primaries().values())
            if len(reported) != 1 or None in reported or old in reported:
                return False
            (address,) = reported
            assert address is not None
            node = self.node_at(address)
            try:
                if node.role() != "master":
                    return False
            except (redis.RedisError, OSError):
                return False
            found[:] = [node]
            return True

        wait_until(switched, timeout=timeout, interval=0.05, what=f"a failover away from {old[0]}:{old[1]}")
        return found[0]

    def bring_back(self, node: Node, timeout: float = 60) -> None:
        """Restart a killed data node and wait until the sentinels have made it a replica of the primary, in sync."""
        node.restart()
        wait_until(lambda: self._replicates_primary(node), timeout=timeout, what=f"{node} to rejoin as a replica")
        wait_until(self._sentinels_see_everything, timeout=timeout, what="every sentinel to see the node again")

    def _replicates_primary(self, node: Node) -> bool:
        try:
            primary = self.primary_address()
            state = node.info("replication")
        except (AssertionError, redis.RedisError, OSError):
            return False
        return (
            state.get("role") == "slave"
            and (str(state.get("master_host")), int(state.get("master_port", 0))) == primary
            and state.get("master_link_status") == "up"
        )

    def wait_in_sync(self, primary: Node, replicas: Sequence[Node], timeout: float = 30) -> None:
        """Wait until every replica is online at ``primary`` and has acknowledged all it had written when called.

        Read from the primary's replication offsets, not from a WAIT: WAIT
        waits only for the writes of its own connection.
        """
        written = int(primary.info("replication")["master_repl_offset"])

        def caught_up() -> bool:
            acknowledged = {}
            for name, value in primary.info("replication").items():
                if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online":
                    acknowledged[(str(value["ip"]), int(value["port"]))] = int(value["offset"])
            return all(acknowledged.get(replica.address, -1) >= written for replica in replicas)

        wait_until(caught_up, timeout=timeout, what=f"{replicas} to catch up with {primary}")
