"""Redis Cluster on loopback: masters (and replicas) made by ``redis-cli --cluster create``, and its faults.

The faults: fail a slot's owner over to its replica (kill -9 it, or a
``CLUSTER FAILOVER`` on the replica), and move a slot to another master by hand
(``CLUSTER SETSLOT ... IMPORTING/MIGRATING``, ``MIGRATE``, ``SETSLOT ... NODE``),
stopping in between if asked: while a slot migrates, its old owner answers ASK
for the keys it no longer holds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from tests.redis_deployments.base import Deployment
from tests.redis_deployments.node import Node
from tests.redis_deployments.standalone import NO_PERSISTENCE, Persistence
from tests.servers import ServerFamily, wait_until

SLOTS = 16384


@dataclass(frozen=True)
class ClusterNodeState:
    """One line of CLUSTER NODES, as one node sees another."""

    id: str
    name: str  # host:port
    flags: frozenset[str]
    master_id: str | None
    slots: frozenset[int]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


class ClusterSetup(Deployment):
    """``masters`` masters (default 3), each with ``replicas`` replicas (default 0), sharing all 16384 slots.

    ``node_timeout`` (ms) is ``cluster-node-timeout``: how long a node must be
    silent before the others think it failed (a replica's failover starts
    then). ``start`` returns once every node sees the whole cluster, every
    slot covered, ``cluster_state:ok``, and every replica in sync with its master.
    """

    def __init__(
        self,
        family: ServerFamily,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout: int = 1000,
        persistence: Persistence = NO_PERSISTENCE,
    ) -> None:
        super().__init__(family)
        self.masters_wanted = masters
        self.replicas_wanted = replicas
        settings = [
            *persistence.settings(),
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {node_timeout}",
            "cluster-allow-replica-migration no",  # the topology changes only when a test says so
            "repl-diskless-sync-delay 0",  # a replica syncs at once, not after 5 s
        ]
        count = masters * (1 + replicas)
        self.cluster_nodes = [
            self.add_node(f"c{number}", settings=settings, extra_ports=["cluster-port"]) for number in range(count)
        ]

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        for node in self.cluster_nodes:
            node.start()
        cli = self.family.require(self.family.cli)
        command = [cli, "--cluster", "create", *(node.name for node in self.cluster_nodes)]
        command += ["--cluster-replicas", str(self.replicas_wanted), "--cluster-yes"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed: {result.stdout[-2000:]} {result.stderr[-2000:]}")
        self.wait_settled()

    def wait_settled(self, timeout: float = 60) -> None:
        """Wait until every live node says ``cluster_state:ok``, knows every node, and all agree on the slots."""
        wait_until(self._settled, timeout=timeout, interval=0.05, what="the cluster to settle")

    def _settled(self) -> bool:
        live = [node for node in self.cluster_nodes if node.running]
        views: list[dict[int, str]] = []
        try:
            for node in live:
                info = _parse_info(node.call("CLUSTER", "INFO", timeout=1))
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_assigned"]) != SLOTS:
                    return False
                if int(info["cluster_known_nodes"]) != len(self.cluster_nodes):
                    return False
                states = self.states(node)
                if any(state.failed and state.name != node.name for state in states if self._alive(state.name)):
                    return False
                if not any(s.is_master for s in states if s.name == node.name):
                    # A replica that has never synced could not take over: its data would be too old.
                    if node.info("replication").get("master_link_status") != "up":
                        return False
                views.append({slot: state.name for state in states if state.is_master for slot in state.slots})
        except (redis.RedisError, OSError):
            return False
        return all(view == views[0] for view in views) and len(views[0]) == SLOTS

    def _alive(self, name: str) -> bool:
        return self.node_at(name).running

    # -- what the cluster says -------------------------------------------------------------

    @property
    def seeds(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, as seed nodes for a cluster client."""
        return [node.address for node in self.cluster_nodes]

    def states(self, seen_from: Node | None = None) -> list[ClusterNodeState]:
        """CLUSTER NODES as ``seen_from`` (default: the first live node) sees the cluster."""
        viewer = seen_from or next(node for node in self.cluster_nodes if node.running)
        return [_parse_node_line(line) for line in str(viewer.call("CLUSTER", "NODES")).splitlines() if line]

    def slot_of(self, key: str) -> int:
        """The hash slot of ``key`` (CLUSTER KEYSLOT)."""
        viewer = next(node for node in self.cluster_nodes if node.running)
        return int(viewer.call("CLUSTER", "KEYSLOT", key))

    def owner_of(self, slot: int) -> Node:
        """The master that serves ``slot``, as the live nodes agree."""
        for state in self.states():
            if state.is_master and slot in state.slots and not state.failed:
                return self.node_at(state.name)
        raise AssertionError(f"no live master serves slot {slot}")

    def replicas_of(self, master: Node) -> list[Node]:
        """The replicas of ``master``."""
        states = self.states()
        master_id = next(state.id for state in states if state.name == master.name)
        return [self.node_at(state.name) for state in states if state.master_id == master_id]

    @property
    def masters(self) -> list[Node]:
        """The live masters that serve slots."""
        return [self.node_at(s.name) for s in self.states() if s.is_master and s.slots and not s.failed]

    # -- failover ----------------------------------------------------------------------------

    def kill_owner(self, slot: int) -> tuple[Node, Node]:
        """kill -9 the owner of ``slot``; returns it and the replica expected to take over (not waited for)."""
        owner = self.owner_of(slot)
        (replica, *_) = self.replicas_of(owner)
        owner.kill()
        return owner, replica

    def wait_for_owner(self, slot: int, expected: Node, timeout: float = 60) -> None:
        """Wait until ``expected`` is the master of ``slot`` and the whole cluster agrees (state ok)."""

        def owns() -> bool:
            try:
                return self.owner_of(slot) is expected and expected.role() == "master" and self._settled()
            except (AssertionError, redis.RedisError, OSError):
                return False

        wait_until(owns, timeout=timeout, interval=0.05, what=f"{expected} to own slot {slot}")

    def fail_over(self, slot: int, *, kill: bool = True, timeout: float = 60) -> tuple[Node, Node]:
        """Move ``slot``'s owner's role to its replica: by kill -9 of the owner, or ``CLUSTER FAILOVER`` on the replica.

        Returns (old owner, new owner) once the cluster agrees; a killed owner stays down.
        """
        if kill:
            old, new = self.kill_owner(slot)
        else:
            old = self.owner_of(slot)
            (new, *_) = self.replicas_of(old)
            new.call("CLUSTER", "FAILOVER")
        self.wait_for_owner(slot, new, timeout)
        if not kill:
            self.wait_replicating(old, new, timeout)
        return old, new

    def wait_replicating(self, replica: Node, master: Node, timeout: float = 60) -> None:
        """Wait until the cluster lists ``replica`` as a replica of ``master`` and its link is up."""

        def replicating() -> bool:
            try:
                listed = replica in self.replicas_of(master)
                return listed and replica.info("replication").get("master_link_status") == "up"
            except (redis.RedisError, OSError, StopIteration):
                return False

        wait_until(replicating, timeout=timeout, interval=0.05, what=f"{replica} to replicate {master}")

    def bring_back(self, node: Node, timeout: float = 60) -> None:
        """Restart a killed node (same ``nodes.conf``: same identity) and wait until the cluster has it back."""
        node.restart()
        self.wait_settled(timeout)

    # -- moving a slot -----------------------------------------------------------------------------

    def begin_migration(self, slot: int, target: Node) -> Node:
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its owner; returns the owner (the source).

        From now on the source serves the slot's keys it still holds and answers
        ASK for the others; ``target`` serves a key only after ASKING.
        """
        source = self.owner_of(slot)
        if source is target:
            raise ValueError(f"{target} already owns slot {slot}")
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def move_keys(self, slot: int, source: Node, target: Node, keys: Iterable[str] | None = None) -> int:
        """MIGRATE ``keys`` (default: every key of the slot) from ``source`` to ``target``; returns how many moved."""
        names = list(keys) if keys is not None else None
        moved = 0
        while True:
            batch = names if names is not None else source.call("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not batch:
                return moved
            target_host, target_port = target.address
            source.call("MIGRATE", target_host, target_port, "", 0, 5000, "KEYS", *batch, timeout=10)
            moved += len(batch)
            if names is not None:
                return moved

    def finish_migration(self, slot: int, source: Node, target: Node) -> None:
        """Give ``slot`` to ``target`` (SETSLOT NODE on target, source, then every other master) and wait."""
        target_id = self.node_id(target)
        for node in [target, source, *(m for m in self.masters if m is not target and m is not source)]:
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_settled()

    def reshard(self, slot: int, target: Node) -> Node:
        """Move ``slot`` with all its keys to ``target``; returns the old owner."""
        source = self.begin_migration(slot, target)
        self.move_keys(slot, source, target)
        self.finish_migration(slot, source, target)
        return source

    def node_id(self, node: Node) -> str:
        """A node's cluster id (CLUSTER MYID)."""
        return str(node.call("CLUSTER", "MYID"))


def _parse_info(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def _parse_node_line(line: str) -> ClusterNodeState:
    """``<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...``."""
    fields = line.split()
    name = fields[1].split("@", 1)[0]
    flags = frozenset(fields[2].split(","))
    slots: set[int] = set()
    for item in fields[8:]:
        if item.startswith("["):
            continue  # a slot being migrated or imported: [slot->-id] / [slot-<-id]
        low, _, high = item.partition("-")
        slots.update(range(int(low), int(high or low) + 1))
    flags_clean = frozenset(flag for flag in flags if flag != "myself")
    return ClusterNodeState(fields[0], name, flags_clean, None if fields[3] == "-" else fields[3], frozenset(slots))
