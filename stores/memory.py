"""The in-process store: the address map in this process's memory.

Every change is made by applying one *event* (a small JSON-able dict) under a
lock. ``FileStore`` reuses exactly that: it writes each event to its journal
before the change is acknowledged, and replays the journal at start-up.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stores import (
    Address,
    AddressClaim,
    AnySubnet,
    Block,
    ClosedPool,
    ExactSubnet,
    Exhausted,
    Granted,
    Network,
    Overlap,
    PoolInfo,
    UnknownPool,
)
from stores.tree import BlockTree

Event = dict[str, Any]


@dataclass
class _Pool:
    info: PoolInfo
    tree: BlockTree
    addresses: dict[int, tuple[float, str]] = field(default_factory=dict)  # address -> (since, note)
    cursor: int | None = None  # last serially claimed address


class MemoryStore:
    """A Store kept in process memory. See ``stores.Store`` for the contract."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._maps = {4: BlockTree(32), 6: BlockTree(128)}
        self._blocks: dict[Network, Block] = {}
        self._pools: dict[tuple[Network, str], _Pool] = {}
        self._scopes: dict[Network, set[str]] = {}
        self._settings: dict[str, str] = {}

    # -- persistence hook -------------------------------------------------

    def _commit(self, event: Event) -> None:
        """Apply a change. Subclasses persist the event before applying it."""
        self._apply(event)

    # -- the Store protocol -----------------------------------------------

    def open_pool(
        self,
        target: ExactSubnet | AnySubnet,
        *,
        scope: str,
        label: str,
        owner: str,
        share_label: str | None = None,
    ) -> Granted | Overlap | Exhausted:
        with self._lock:
            now = time.time()
            if isinstance(target, AnySubnet):
                subnet = self._find_free(target)
                if subnet is None:
                    return Exhausted()
                block = {"label": label, "owner": owner, "since": now}
            else:
                subnet = target.subnet
                tree = self._maps[subnet.version]
                found = tree.holder(int(subnet.network_address), subnet.prefixlen)
                if found is None:
                    block = {"label": label, "owner": owner, "since": now}
                else:
                    holder = self._blocks[_network(subnet.version, *found)]
                    if share_label is None or holder.subnet != subnet or holder.label != share_label:
                        return Overlap(holder)
                    existing = self._pools.get((subnet, scope))
                    if existing is not None:
                        return Granted(existing.info, created=False)
                    block = None
            self._commit(
                {"op": "open", "subnet": str(subnet), "scope": scope, "owner": owner, "since": now, "block": block}
            )
            return Granted(self._pools[(subnet, scope)].info, created=True)

    def _find_free(self, target: AnySubnet) -> Network | None:
        """The subnet a dynamic request would get; the claim itself is made by the event."""
        for parent in target.parents:
            tree = self._maps[parent.version]
            net = tree.find_first(int(parent.network_address), parent.prefixlen, target.prefixlen)
            if net is not None:
                return _network(parent.version, target.prefixlen, net)
        return None

    def close_pool(self, subnet: Network, scope: str) -> ClosedPool | None:
        with self._lock:
            pool = self._pools.get((subnet, scope))
            if pool is None:
                return None
            freed = self._scopes[subnet] == {scope}
            self._commit({"op": "close", "subnet": str(subnet), "scope": scope})
            return ClosedPool(pool.info, freed)

    def pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        with self._lock:
            pool = self._pools.get((subnet, scope))
            return None if pool is None else pool.info

    def claim_address(self, subnet: Network, scope: str, address: Address, note: str = "") -> bool:
        with self._lock:
            pool = self._get(subnet, scope)
            if int(address) in pool.addresses:
                return False
            self._commit(_claim_event(subnet, scope, address, note, serial=False))
            return True

    def claim_next_address(
        self, subnet: Network, scope: str, first: Address, last: Address, serial: bool, note: str = ""
    ) -> Address | None:
        with self._lock:
            pool = self._get(subnet, scope)
            found = self._next_free(pool, int(first), int(last), serial)
            if found is None:
                return None
            address = ipaddress.ip_address(found)
            self._commit(_claim_event(subnet, scope, address, note, serial))
            return address

    def _next_free(self, pool: _Pool, first: int, last: int, serial: bool) -> int | None:
        tree, bits = pool.tree, pool.tree.bits
        starts = [first]
        if serial and pool.cursor is not None and first <= pool.cursor < last:
            starts.insert(0, pool.cursor + 1)
        for start in starts:
            found = tree.find_first(tree.root_net, tree.root_len, bits, start)
            if found is not None and found <= last:
                return found
        return None

    def release_address(self, subnet: Network, scope: str, address: Address) -> bool:
        with self._lock:
            pool = self._get(subnet, scope)
            if int(address) not in pool.addresses:
                return False
            self._commit({"op": "release", "subnet": str(subnet), "scope": scope, "address": str(address)})
            return True

    def blocks(self) -> list[Block]:
        with self._lock:
            return list(self._blocks.values())

    def pools(self) -> list[PoolInfo]:
        with self._lock:
            return [pool.info for pool in self._pools.values()]

    def addresses(self, subnet: Network, scope: str) -> list[Address]:
        with self._lock:
            pool = self._get(subnet, scope)
            return [ipaddress.ip_address(value) for value in sorted(pool.addresses)]

    def address_claims(self, subnet: Network, scope: str) -> list[AddressClaim]:
        with self._lock:
            pool = self._get(subnet, scope)
            return [
                AddressClaim(ipaddress.ip_address(value), *pool.addresses[value]) for value in sorted(pool.addresses)
            ]

    def ping(self) -> None:
        """Memory always answers."""

    def setting(self, name: str, default: str) -> str:
        with self._lock:
            if name not in self._settings:
                self._commit({"op": "set", "name": name, "value": default})
            return self._settings[name]

    def close(self) -> None:
        """Nothing to release for memory."""

    # -- applying events --------------------------------------------------

    def _get(self, subnet: Network, scope: str) -> _Pool:
        pool = self._pools.get((subnet, scope))
        if pool is None:
            raise UnknownPool(f"no pool {subnet} in scope {scope!r}")
        return pool

    def _apply(self, event: Event) -> None:
        """Apply one event. Events are only ever built from valid, checked requests."""
        op = event["op"]
        if op == "set":
            self._settings[event["name"]] = event["value"]
            return
        subnet = ipaddress.ip_network(event["subnet"])
        scope = event["scope"]
        if op == "open":
            self._apply_open(subnet, scope, event)
        elif op == "close":
            self._apply_close(subnet, scope)
        elif op == "claim":
            pool = self._pools[(subnet, scope)]
            address = int(ipaddress.ip_address(event["address"]))
            if pool.tree.claim(address, pool.tree.bits) is not None:
                raise ValueError(f"address {event['address']} claimed twice in {subnet}")
            pool.addresses[address] = (event.get("since", 0.0), event.get("note", ""))
            if event.get("serial"):
                pool.cursor = address
        elif op == "release":
            pool = self._pools[(subnet, scope)]
            address = int(ipaddress.ip_address(event["address"]))
            pool.tree.release(address, pool.tree.bits)
            pool.addresses.pop(address, None)
        else:
            raise ValueError(f"unknown event {op!r}")

    def _apply_open(self, subnet: Network, scope: str, event: Event) -> None:
        spec = event["block"]
        if spec is not None:
            tree = self._maps[subnet.version]
            if tree.claim(int(subnet.network_address), subnet.prefixlen) is not None:
                raise ValueError(f"block {subnet} overlaps a held block")
            self._blocks[subnet] = Block(subnet, spec["label"], spec["owner"], spec["since"])
            self._scopes[subnet] = set()
        block = self._blocks[subnet]
        if scope in self._scopes[subnet]:
            raise ValueError(f"pool {subnet} {scope!r} opened twice")
        bits = subnet.max_prefixlen
        info = PoolInfo(block, scope, event["owner"], event["since"])
        tree = BlockTree(bits, subnet.prefixlen, int(subnet.network_address))
        self._pools[(subnet, scope)] = _Pool(info, tree, cursor=event.get("cursor"))
        self._scopes[subnet].add(scope)

    def _apply_close(self, subnet: Network, scope: str) -> None:
        del self._pools[(subnet, scope)]
        scopes = self._scopes[subnet]
        scopes.discard(scope)
        if not scopes:
            del self._scopes[subnet]
            del self._blocks[subnet]
            self._maps[subnet.version].release(int(subnet.network_address), subnet.prefixlen)

    def _snapshot_events(self) -> Iterable[Event]:
        """Events that rebuild the current state from nothing (used to compact journals)."""
        for name, value in self._settings.items():
            yield {"op": "set", "name": name, "value": value}
        for subnet, scopes in self._scopes.items():
            block = self._blocks[subnet]
            spec: dict[str, Any] | None = {"label": block.label, "owner": block.owner, "since": block.since}
            for scope in sorted(scopes):
                pool = self._pools[(subnet, scope)]
                yield {
                    "op": "open",
                    "subnet": str(subnet),
                    "scope": scope,
                    "owner": pool.info.owner,
                    "since": pool.info.since,
                    "block": spec,
                    "cursor": pool.cursor,
                }
                spec = None
                for address in sorted(pool.addresses):
                    yield {
                        "op": "claim",
                        "subnet": str(subnet),
                        "scope": scope,
                        "address": str(ipaddress.ip_address(address)),
                    }


def _claim_event(
    subnet: Network, scope: str, address: Address, note: str, serial: bool, since: float | None = None
) -> Event:
    event: Event = {
        "op": "claim",
        "subnet": str(subnet),
        "scope": scope,
        "address": str(address),
        "since": time.time() if since is None else since,
    }
    if note:
        event["note"] = note
    if serial:
        event["serial"] = True
    return event


def _network(version: int, plen: int, net: int) -> Network:
    if version == 4:
        return ipaddress.IPv4Network((net, plen))
    return ipaddress.IPv6Network((net, plen))
