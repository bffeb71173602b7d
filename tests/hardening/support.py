"""Helpers shared by the hardening tests: store snapshots, map checks, raw HTTP, a durable Redis, and the
holdings of a campaign's clients, which find every duplicate grant."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from stores import Network, Store
from tests.helpers import addresses_of
from tests.servers import RedisServer

Snapshot = tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]


def snapshot(store: Store) -> Snapshot:
    """Everything a store holds: blocks, pools and every pool's addresses, in a comparable form."""
    blocks = tuple(sorted((str(b.subnet), b.label, b.owner, b.since) for b in store.blocks()))
    pools = store.pools()
    pool_rows = tuple(sorted((str(p.subnet), p.scope, p.owner, p.since) for p in pools))
    addresses = tuple(
        sorted((str(p.subnet), p.scope, tuple(str(a) for a in addresses_of(store, p.subnet, p.scope))) for p in pools)
    )
    return blocks, pool_rows, addresses


def overlapping_pairs(subnets: Iterable[Network]) -> list[tuple[Network, Network]]:
    """Every pair of overlapping subnets (same family), found by sorting: neighbours suffice."""
    found: list[tuple[Network, Network]] = []
    every = list(subnets)
    for version in (4, 6):
        ordered = sorted(
            (s for s in every if s.version == version), key=lambda s: (int(s.network_address), s.prefixlen)
        )
        widest_end = -1
        widest: Network | None = None
        for subnet in ordered:
            if widest is not None and int(subnet.network_address) <= widest_end:
                found.append((widest, subnet))
            end = int(subnet.broadcast_address)
            if end > widest_end:
                widest_end, widest = end, subnet
    return found


def check_map(store: Store) -> dict[tuple[str, str], list[str]]:
    """Assert the store's map is sound; return {(subnet, scope): [addresses]}.

    Sound: no two blocks overlap, every pool sits on a block of exactly its subnet,
    every block has a pool, no address is held twice in a pool, and every address
    lies inside its pool's subnet, off the IPv4 network and broadcast addresses.
    """
    blocks = store.blocks()
    block_subnets = [b.subnet for b in blocks]
    assert len(set(block_subnets)) == len(block_subnets), f"a block is listed twice: {sorted(map(str, block_subnets))}"
    assert overlapping_pairs(block_subnets) == [], f"overlapping blocks: {overlapping_pairs(block_subnets)}"
    pools = store.pools()
    assert {p.subnet for p in pools} == set(block_subnets), "every block has a pool and every pool a block"
    held: dict[tuple[str, str], list[str]] = {}
    for pool in pools:
        key = (str(pool.subnet), pool.scope)
        assert key not in held, f"pool {key} listed twice"
        addresses = addresses_of(store, pool.subnet, pool.scope)
        assert len(set(addresses)) == len(addresses), f"an address is held twice in {key}: {addresses}"
        for address in addresses:
            assert address in pool.subnet, f"{address} lies outside its pool {key}"
            if pool.subnet.version == 4 and pool.subnet.prefixlen <= 30:
                assert address not in (pool.subnet.network_address, pool.subnet.broadcast_address), (address, key)
        held[key] = [str(a) for a in addresses]
    return held


# -- raw HTTP over a Unix socket ------------------------------------------------


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


Response = tuple[int, dict[str, str], bytes]


def read_response(stream: BinaryIO) -> Response | None:
    """One HTTP response from ``stream``; None when the server closed the connection first.

    An interim 1xx response (``100 Continue``) is returned like any other: the caller reads on.
    """
    line = stream.readline(65537)
    if not line:
        return None
    version, status, _ = (line.decode("latin-1").rstrip("\r\n") + " ").split(" ", 2)
    assert version.startswith("HTTP/"), f"not an HTTP status line: {line!r}"
    headers: dict[str, str] = {}
    while True:
        header = stream.readline(65537)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if 100 <= int(status) < 200:
        body = b""
    elif "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while (size := int(stream.readline(65537).split(b";")[0], 16)) > 0:
            body += stream.read(size)
            stream.readline(65537)
        stream.readline(65537)
    else:
        body = stream.read()
    return int(status), headers, body


def read_responses(sock: socket.socket, count: int = 1) -> list[Response]:
    """Read up to ``count`` HTTP responses from ``sock`` (fewer if the server closes first)."""
    replies: list[Response] = []
    with sock.makefile("rb") as stream:
        for _ in range(count):
            try:
                response = read_response(stream)
            except ConnectionResetError:
                break
            if response is None:
                break
            replies.append(response)
            if response[1].get("connection", "").lower() == "close":
                break
    return replies


def exchange(path: Path, data: bytes, count: int = 1, timeout: float = 5.0) -> list[Response]:
    """Send ``data`` as is, half-close, and read up to ``count`` responses."""
    sock = connect(path, timeout)
    try:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before it has read everything (431, 413 ...)
        return read_responses(sock, count)
    finally:
        sock.close()


def request_bytes(method: str, body: bytes = b"", headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    """A well-formed request, as the engine would send it (no Content-Type)."""
    lines = [f"POST /{method} HTTP/{version}", "Host: localhost", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- a Redis that keeps its data across kills -------------------------------------


class DurableRedis(RedisServer):
    """A server with an append-only file synced on every write: a kill -9 loses no acknowledged write."""

    options = ("--appendonly", "yes", "--appendfsync", "always")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bits(network: Network) -> str:
    if network.prefixlen == 0:
        return ""
    return format(int(network.network_address), f"0{network.max_prefixlen}b")[: network.prefixlen]


def check_redis_keys(client: Any, prefix: str) -> dict[tuple[str, str], set[str]]:
    """Read a Redis map's keys directly and assert they agree: no half-claims, no orphaned records.

    Every slot key has a pools hash and the reverse; every addrs/atree key belongs to a
    live pool; the family trees claim exactly the slots; each pool's address tree claims
    exactly its listed addresses. Returns {(cidr, scope): addresses}.
    """
    head = "{" + prefix + "}:"
    keys = {_text(k) for k in client.scan_iter(match=head + "*", count=1000)}
    kinds: dict[str, set[str]] = {}
    for key in keys:
        kind, _, rest = key[len(head) :].partition(":")
        kinds.setdefault(kind, set()).add(rest)
    unknown = set(kinds) - {"slot", "pools", "addrs", "atree", "tree", "settings", "host", "twins", "req", "map",
                            "alive", "probe", "expect", "restored", "cleaned"}  # fmt: skip
    assert not unknown, f"unexpected kinds of keys: {unknown}"
    slots, pool_keys = kinds.get("slot", set()), kinds.get("pools", set())
    assert slots == pool_keys, f"slots without pools: {slots - pool_keys}; pools without a slot: {pool_keys - slots}"
    scopes: dict[str, set[str]] = {}
    for cidr in pool_keys:
        found = {_text(scope) for scope in client.hkeys(f"{head}pools:{cidr}")}
        assert found, f"empty pools hash for {cidr}"
        scopes[cidr] = found
    split = re.compile(r"^(.*?/\d+):(.*)$")
    held: dict[tuple[str, str], set[str]] = {(cidr, scope): set() for cidr, found in scopes.items() for scope in found}
    for kind in ("addrs", "atree"):
        for rest in kinds.get(kind, set()):
            match = split.match(rest)
            assert match is not None, f"unreadable key {kind}:{rest}"
            assert (match[1], match[2]) in held, f"orphaned {kind} key for {match[1]} {match[2]!r}"
    for (cidr, scope), addresses in held.items():
        addresses.update(_text(a) for a in client.hkeys(f"{head}addrs:{cidr}:{scope}"))
        subnet = ipaddress.ip_network(cidr)
        tree = client.hgetall(f"{head}atree:{cidr}:{scope}")
        depth = subnet.max_prefixlen - subnet.prefixlen
        leaves = set()
        for raw_node, value in tree.items():
            node = _text(raw_node)
            if node != "cursor" and _text(value) == "c":
                assert len(node) == depth, f"address tree of {cidr} {scope} claims a non-leaf {node!r}"
                leaves.add(str(subnet.network_address + int(node, 2)) if node else str(subnet.network_address))
        assert leaves == addresses, f"{cidr} {scope}: tree claims {leaves ^ addresses} that the addrs hash does not"
    for family, width in (("4", 32), ("6", 128)):
        tree = client.hgetall(f"{head}tree:{family}")
        claimed = {_text(node) for node, value in tree.items() if _text(value) == "c"}
        expected = {_bits(ipaddress.ip_network(c)) for c in slots if ipaddress.ip_network(c).max_prefixlen == width}
        assert claimed == expected, f"tree:{family} claims {claimed ^ expected} differently from the slot keys"
    return held


@dataclass
class Holdings:
    """What a campaign's clients were granted and still hold, and every duplicate grant.

    Every method is called with ``lock`` held. A pool whose release was sent is *uncertain*
    until the release answers 200 (the release may land any time): it is no longer held for
    sure, so a grant of it again is no duplicate.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    pools: dict[str, set[str]] = field(default_factory=dict)  # PoolID -> addresses held
    uncertain: set[str] = field(default_factory=set)  # pools whose release got no clear answer
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # held, but not in the map once the drivers rebuilt it
    round: str = "warm-up"  # the fault whose round this is, for the duplicates' report

    def held_subnets(self) -> list[Network]:
        """The subnets held for sure."""
        return [ipaddress.ip_network(p.split("/", 1)[1]) for p in self.pools if p not in self.uncertain]

    def certain(self) -> dict[str, set[str]]:
        """A copy of the pools held for sure, with their addresses."""
        return {pool_id: set(held) for pool_id, held in self.pools.items() if pool_id not in self.uncertain}

    def releasing(self, pool_id: str) -> None:
        """A ReleasePool of ``pool_id`` is about to be sent."""
        self.uncertain.add(pool_id)

    def released(self, pool_id: str, status: int) -> None:
        """The ReleasePool of ``pool_id`` answered ``status``."""
        if status == 200:
            self.pools.pop(pool_id, None)
            self.uncertain.discard(pool_id)  # released: nobody holds it

    def pool_granted(self, pool_id: str, pool: str) -> None:
        """A RequestPool was granted ``pool`` as ``pool_id``: a duplicate if it overlaps a subnet held."""
        subnet = ipaddress.ip_network(pool)
        clash = [str(s) for s in self.held_subnets() if s.overlaps(subnet)]
        if clash:
            self.duplicates.append(f"{self.round}: {subnet} handed out while {clash} are held")
        self.uncertain.discard(pool_id)  # an uncertain release did land, then
        self.pools[pool_id] = set()

    def address_granted(self, pool_id: str, address: str) -> None:
        """A RequestAddress in ``pool_id`` was granted ``address`` (CIDR): a duplicate if it is held."""
        if pool_id in self.uncertain:
            return
        address = address.split("/")[0]
        if address in self.pools.setdefault(pool_id, set()):
            self.duplicates.append(f"{self.round}: address {address} of {pool_id} handed out twice")
        self.pools[pool_id].add(address)
