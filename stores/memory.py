"""The in-process store: the address map in this process's memory.

Every change is made by applying one *event* (a small dict) under a lock.
``FileStore`` reuses exactly that: it writes each event to its journal before the
change is acknowledged, and replays the journal at start-up.

Events name subnets and addresses by ints (``subnet``: a block key, see ``key_of``;
``address``: the address as an int), so applying one parses no text. The journal's
text form of an event is ``stores.journal``'s business.

The state is laid out for size, since one driver may hold 100,000 pools: blocks
and pools are slotted records keyed by ints, their strings are interned, a pool's
address structures appear with its first address, and the ``Block``/``PoolInfo``
objects of the Store protocol are built when asked for, not kept.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from stores.base import (
    Address,
    AddressClaim,
    AnySubnet,
    Block,
    ClosedPool,
    ConfigurationError,
    ExactSubnet,
    Granted,
    Lease,
    Network,
    NoFreeSubnet,
    Overlap,
    PoolInfo,
    StoreTraits,
    UnknownPool,
)
from stores.tree import BlockTree

Event = dict[str, Any]
StateCopy = tuple[
    dict[str, str],  # settings
    dict[int, tuple[str, str, float]],  # block key -> label, owner, since
    list[tuple[int, str, str, float, int | None, dict[int, tuple[float, str]] | None]],  # pools
]
"""What ``MemoryStore._copy_state`` returns."""

BITMAP_BITS = 16
"""Pools of at most 2**16 addresses track their claims in one int bitmap; larger ones in a BlockTree."""

_FAMILY_BITS = {4: 32, 6: 128}


class _Block:
    """A block of the map: its label, owner, time, and how many pools share it."""

    __slots__ = ("label", "owner", "since", "pools")

    def __init__(self, label: str, owner: str, since: float) -> None:
        self.label = label
        self.owner = owner
        self.since = since
        self.pools = 0


class _Pool:
    """A pool's own state. ``claims`` is None until its first address."""

    __slots__ = ("owner", "since", "cursor", "claims", "used")

    def __init__(self, owner: str, since: float, cursor: int | None) -> None:
        self.owner = owner
        self.since = since
        self.cursor = cursor  # last serially claimed address
        self.claims: dict[int, tuple[float, str]] | None = None  # address -> (since, note)
        self.used: int | BlockTree = 0  # claimed offsets from the network: a bitmap, or a tree for large pools


class MemoryStore:
    """A Store kept in process memory. See ``stores.base.Store`` for the contract."""

    TRAITS = StoreTraits(in_process=True)

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._maps = {4: BlockTree(32), 6: BlockTree(128)}
        self._blocks: dict[int, _Block] = {}
        self._pools: dict[tuple[int, str], _Pool] = {}
        self._settings: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0, read_only: bool = False) -> MemoryStore:
        """Open ``memory://``. It cannot be read from outside its process, so ``read_only`` is refused."""
        cls.check_url(url)
        if read_only:
            raise ConfigurationError("a memory:// store lives in its driver's process: ask that driver")
        return cls()

    @staticmethod
    def check_url(url: str) -> None:
        """ConfigurationError unless ``url`` is ``memory://``."""
        if url.rstrip("/") != "memory:":
            raise ConfigurationError(f"memory:// takes no path or options, not {url!r}")

    @property
    def traits(self) -> StoreTraits:
        """What kind of store this is."""
        return self.TRAITS

    def lease(self, name: str, record: dict[str, Any], ttl: float) -> Lease | None:
        """None: one host uses a memory store, so there is nobody to tell apart."""
        return None

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
    ) -> Granted | Overlap | NoFreeSubnet:
        with self._lock:
            now = time.time()
            if isinstance(target, AnySubnet):
                subnet = self._find_free(target)
                if subnet is None:
                    return NoFreeSubnet()
                key = key_of(subnet)
                block: dict[str, Any] | None = {"label": label, "owner": owner, "since": now}
            else:
                subnet = target.subnet
                key = key_of(subnet)
                version, net, plen = split_key(key)
                found = self._maps[version].holder(net, plen)
                if found is None:
                    block = {"label": label, "owner": owner, "since": now}
                else:
                    holder_key = make_key(version, found[1], found[0])
                    holder = self._blocks[holder_key]
                    if share_label is None or holder_key != key or holder.label != share_label:
                        return Overlap(_block_info(network_of(holder_key), holder))
                    existing = self._pools.get((key, scope))
                    if existing is not None:
                        return Granted(_pool_info(subnet, holder, scope, existing), created=False)
                    block = None
            self._commit({"op": "open", "subnet": key, "scope": scope, "owner": owner, "since": now, "block": block})
            return Granted(self._info(subnet, key, scope), created=True)

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
            key = key_of(subnet)
            pool = self._pools.get((key, scope))
            if pool is None:
                return None
            block = self._blocks[key]
            info = _pool_info(subnet, block, scope, pool)
            freed = block.pools == 1
            self._commit({"op": "close", "subnet": key, "scope": scope})
            return ClosedPool(info, freed)

    def pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        with self._lock:
            key = key_of(subnet)
            pool = self._pools.get((key, scope))
            return None if pool is None else _pool_info(subnet, self._blocks[key], scope, pool)

    def claim_address(self, subnet: Network, scope: str, address: Address, note: str = "") -> bool:
        with self._lock:
            key = key_of(subnet)
            pool = self._get(key, scope, subnet)
            value = int(address)
            if pool.claims is not None and value in pool.claims:
                return False
            self._commit(_claim_event(key, scope, value, note, serial=False))
            return True

    def claim_next_address(
        self, subnet: Network, scope: str, first: Address, last: Address, serial: bool, note: str = ""
    ) -> Address | None:
        with self._lock:
            key = key_of(subnet)
            pool = self._get(key, scope, subnet)
            found = self._next_free(pool, key, int(first), int(last), serial)
            if found is None:
                return None
            self._commit(_claim_event(key, scope, found, note, serial))
            return _address(subnet.version, found)

    def _next_free(self, pool: _Pool, key: int, first: int, last: int, serial: bool) -> int | None:
        if serial and pool.cursor is not None and first <= pool.cursor < last:
            found = _first_unclaimed(pool, key, pool.cursor + 1)
            if found is not None and found <= last:
                return found
        found = _first_unclaimed(pool, key, first)
        return found if found is not None and found <= last else None

    def release_address(self, subnet: Network, scope: str, address: Address) -> bool:
        with self._lock:
            key = key_of(subnet)
            pool = self._get(key, scope, subnet)
            value = int(address)
            if pool.claims is None or value not in pool.claims:
                return False
            self._commit({"op": "release", "subnet": key, "scope": scope, "address": value})
            return True

    def blocks(self) -> list[Block]:
        with self._lock:
            held = list(self._blocks.items())
        # The records' label, owner and time never change, so the objects are built outside the lock.
        return [_block_info(network_of(key), block) for key, block in held]

    def pools(self) -> list[PoolInfo]:
        with self._lock:
            held = [(key, scope, pool, self._blocks[key]) for (key, scope), pool in self._pools.items()]
        return [_pool_info(network_of(key), block, scope, pool) for key, scope, pool, block in held]

    def address_claims(self, subnet: Network, scope: str) -> list[AddressClaim]:
        with self._lock:
            pool = self._get(key_of(subnet), scope, subnet)
            claims = sorted((pool.claims or {}).items())
        return [AddressClaim(_address(subnet.version, value), since, note) for value, (since, note) in claims]

    def ping(self) -> None:
        """Memory always answers."""

    def setting(self, name: str) -> str | None:
        with self._lock:
            return self._settings.get(name)

    def make_setting(self, name: str, value: str) -> str:
        with self._lock:
            if name not in self._settings:
                self._commit({"op": "set", "name": name, "value": value})
            return self._settings[name]

    def close(self) -> None:
        """Nothing to release for memory."""

    # -- applying events --------------------------------------------------

    def _get(self, key: int, scope: str, subnet: Network) -> _Pool:
        pool = self._pools.get((key, scope))
        if pool is None:
            raise UnknownPool(f"no pool {subnet} in scope {scope!r}")
        return pool

    def _info(self, subnet: Network, key: int, scope: str) -> PoolInfo:
        return _pool_info(subnet, self._blocks[key], scope, self._pools[(key, scope)])

    def _apply(self, event: Event) -> None:
        """Apply one event. Events are only ever built from valid, checked requests."""
        op = event["op"]
        if op == "claim":
            self._apply_claim(event)
        elif op == "release":
            self._apply_release(event)
        elif op == "open":
            self._apply_open(event["subnet"], sys.intern(event["scope"]), event)
        elif op == "close":
            self._apply_close(event["subnet"], event["scope"])
        elif op == "set":
            self._settings[event["name"]] = event["value"]
        else:
            raise ValueError(f"unknown event {op!r}")

    def _apply_claim(self, event: Event) -> None:
        key = event["subnet"]
        pool = self._pools[(key, event["scope"])]
        address = event["address"]
        if pool.claims is None:
            pool.claims = {}
        elif address in pool.claims:
            raise ValueError(f"address {address} claimed twice in {network_of(key)}")
        _mark(pool, key, address, True)
        pool.claims[address] = (event.get("since", 0.0), sys.intern(event.get("note", "")))
        if event.get("serial"):
            pool.cursor = address

    def _apply_release(self, event: Event) -> None:
        key = event["subnet"]
        pool = self._pools[(key, event["scope"])]
        address = event["address"]
        if pool.claims is not None and pool.claims.pop(address, None) is not None:
            _mark(pool, key, address, False)

    def _apply_open(self, key: int, scope: str, event: Event) -> None:
        spec = event["block"]
        if spec is not None:
            version, net, plen = split_key(key)
            if self._maps[version].claim(net, plen) is not None:
                raise ValueError(f"block {network_of(key)} overlaps a held block")
            self._blocks[key] = _Block(sys.intern(spec["label"]), sys.intern(spec["owner"]), spec["since"])
        block = self._blocks[key]
        if (key, scope) in self._pools:
            raise ValueError(f"pool {network_of(key)} {scope!r} opened twice")
        since = event["since"]
        if since == block.since:
            since = block.since  # one float object for both: a loaded state has two equal copies
        self._pools[(key, scope)] = _Pool(sys.intern(event["owner"]), since, event.get("cursor"))
        block.pools += 1

    def _apply_close(self, key: int, scope: str) -> None:
        del self._pools[(key, scope)]
        block = self._blocks[key]
        block.pools -= 1
        if not block.pools:
            del self._blocks[key]
            version, net, plen = split_key(key)
            self._maps[version].release(net, plen)

    def _copy_state(self) -> StateCopy:
        """A consistent copy of the state, as cheap to take under the lock as can be: plain tuples.

        Events are built from it afterwards (``_snapshot_events``), outside the lock.
        """
        blocks = {key: (block.label, block.owner, block.since) for key, block in self._blocks.items()}
        pools = [
            (key, scope, pool.owner, pool.since, pool.cursor, dict(pool.claims) if pool.claims else None)
            for (key, scope), pool in self._pools.items()
        ]
        return dict(self._settings), blocks, pools

    def _snapshot_events(self, state: StateCopy | None = None) -> Iterator[Event]:
        """Events that rebuild ``state`` (a ``_copy_state``; by default the current state) from nothing."""
        settings, blocks, pools = self._copy_state() if state is None else state
        for name, value in settings.items():
            yield {"op": "set", "name": name, "value": value}
        described: set[int] = set()
        for key, scope, owner, since, cursor, claims in pools:
            spec: dict[str, Any] | None = None
            if key not in described:
                described.add(key)
                label, block_owner, block_since = blocks[key]
                spec = {"label": label, "owner": block_owner, "since": block_since}
            yield {
                "op": "open",
                "subnet": key,
                "scope": scope,
                "owner": owner,
                "since": since,
                "block": spec,
                "cursor": cursor,
            }
            for address, (claimed_since, note) in sorted((claims or {}).items()):
                yield _claim_event(key, scope, address, note, serial=False, since=claimed_since)

    def _live_count(self) -> int:
        """How many events ``_snapshot_events`` would yield, without building them."""
        claims = sum(len(pool.claims) for pool in self._pools.values() if pool.claims)
        return len(self._settings) + len(self._pools) + claims


# -- a pool's addresses ----------------------------------------------------


def _mark(pool: _Pool, key: int, address: int, claimed: bool) -> None:
    """Record ``address`` as claimed (or free again) in the pool's search structure."""
    version, net, plen = split_key(key)
    host_bits = _FAMILY_BITS[version] - plen
    offset = address - net
    if not 0 <= offset < 1 << host_bits:
        raise ValueError(f"address {address} is outside {network_of(key)}")
    if host_bits <= BITMAP_BITS:
        assert isinstance(pool.used, int)
        pool.used = pool.used | 1 << offset if claimed else pool.used & ~(1 << offset)
        return
    if not isinstance(pool.used, BlockTree):
        pool.used = BlockTree(_FAMILY_BITS[version], plen, net)
    if claimed:
        pool.used.claim(address, pool.used.bits)
    else:
        pool.used.release(address, pool.used.bits)


def _first_unclaimed(pool: _Pool, key: int, start: int) -> int | None:
    """The lowest address of the pool at or after ``start`` that it has not handed out; None when there is none."""
    used = pool.used
    if isinstance(used, BlockTree):
        return used.find_first(used.root_net, used.root_len, used.bits, start)
    version, net, plen = split_key(key)
    if start < net:
        start = net
    offset = start - net
    free = ~used >> offset  # the free offsets from start on, as set bits (infinitely many past the end)
    offset += (free & -free).bit_length() - 1
    return net + offset if offset < 1 << (_FAMILY_BITS[version] - plen) else None


# -- keys, objects and text --------------------------------------------------


def make_key(version: int, net: int, plen: int) -> int:
    """One int naming a subnet: its network, then 8 bits of prefix length, then 1 bit for IPv6."""
    return (net << 8 | plen) << 1 | (version == 6)


def split_key(key: int) -> tuple[int, int, int]:
    """``(version, network, prefixlen)`` of a block key."""
    return 6 if key & 1 else 4, key >> 9, key >> 1 & 0xFF


def key_of(subnet: Network) -> int:
    """The block key of a subnet (``make_key``, spelt out: every store call makes one)."""
    return (int(subnet.network_address) << 8 | subnet.prefixlen) << 1 | (subnet.version == 6)


def network_of(key: int) -> Network:
    """The subnet a block key names."""
    version, net, plen = split_key(key)
    return _network(version, plen, net)


def _network(version: int, plen: int, net: int) -> Network:
    if version == 4:
        return ipaddress.IPv4Network((net, plen))
    return ipaddress.IPv6Network((net, plen))


def _address(version: int, value: int) -> Address:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def _block_info(subnet: Network, block: _Block) -> Block:
    return Block(subnet, block.label, block.owner, block.since)


def _pool_info(subnet: Network, block: _Block, scope: str, pool: _Pool) -> PoolInfo:
    return PoolInfo(_block_info(subnet, block), scope, pool.owner, pool.since)


def _claim_event(key: int, scope: str, address: int, note: str, serial: bool, since: float | None = None) -> Event:
    event: Event = {
        "op": "claim",
        "subnet": key,
        "scope": scope,
        "address": address,
        "since": time.time() if since is None else since,
    }
    if note:
        event["note"] = note
    if serial:
        event["serial"] = True
    return event
