"""The Redis store: one address map shared by every host that names the same Redis and prefix.

Every operation that changes the map is ONE call of the Lua script in
``stores/redis/scripts.lua`` (EVALSHA; redis-py loads the script and retries
once when the server answers NOSCRIPT), so it is atomic across hosts and either
happens entirely or not at all. The script runs the sparse buddy tree of
``stores/tree.py``; its cost depends on prefix lengths only, never on how many
blocks or addresses are claimed. How blocks and addresses travel between Python
and Lua (bit strings) is ``stores.redis.codec``'s; URLs are ``stores.redis.urls``'.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError

from stores.base import (
    SHARED,
    Address,
    AddressClaim,
    AnySubnet,
    Block,
    ClosedPool,
    ConfigurationError,
    CorruptState,
    ExactSubnet,
    Granted,
    Lease,
    MapIdentity,
    MapLost,
    MapRecovering,
    MapStatus,
    Network,
    NoFreeSubnet,
    Overlap,
    ParentUsage,
    PoolInfo,
    StoreError,
    StoreTraits,
    StoreUnavailable,
)
from stores.redis import codec, connect, urls
from stores.redis.lease import RedisLease
from stores.redis.server import ServerWatch
from stores.redis.urls import DEFAULT_PREFIX, Durability

SCRIPT = resources.files("stores.redis").joinpath("scripts.lua").read_text(encoding="utf-8")

# The share of the timeout kept between the script's deadline and our own.
_DEADLINE_MARGIN = 0.1


def _request_id() -> str:
    """A fresh name for one call that changes the map (``{P}:req:<id>``)."""
    return secrets.token_hex(16)


class _Dropped(StoreUnavailable):
    """The script answered that it did not run the call (too late, or already abandoned)."""


_ANSWERED = (_Dropped, MapLost, MapRecovering)
"""Failures the script itself answered with: the call did not run, so there is nothing to abandon."""

_CURRENT: Any = object()
"""The identity a call is made under by default: the one the store works on."""

_CONFIRM_AT_MOST = 32
"""Request ids whose replies arrived, sent along with the next call so that their undo records go."""


@dataclass(frozen=True)
class _Clock:
    """The server's clock as seen from here, learnt from the time in every reply."""

    offset: int  # server Unix time minus our monotonic time, in microseconds
    error: int  # how far off ``offset`` may be: half the round trip it was measured over


class RedisStore:
    """A Store kept in Redis. See ``stores.base.Store`` for the contract.

    Key map (``P`` is the prefix; ``{P}`` is a hash tag, so every key of a map
    lives in one Redis Cluster slot and the script may touch them all)::

        {P}:settings                 hash    setting name -> value (written once, HSETNX)
        {P}:tree:4, {P}:tree:6       hash    the family's block tree: bit string -> "c" (claimed)
                                             or the prefix length of the largest free block below
        {P}:slot:<cidr>              string  a claimed block: JSON {"owner", "label", "since"}
        {P}:pools:<cidr>             hash    the block's pools: scope -> JSON {"owner", "since", "cursor"}
        {P}:addrs:<cidr>:<scope>     hash    a pool's claimed addresses: address -> JSON {"since"}
        {P}:atree:<cidr>:<scope>     hash    the pool's address tree (bit strings below <cidr>), and
                                             "cursor": the bits of its last serial claim
        {P}:host:<name>              string  a lease (``RedisLease``): JSON record of its holder, expiring
        {P}:twins:<name>             string  a note left for the lease's holder, expiring
        {P}:req:<id>                 string  a call that changed the map: JSON telling how to undo
                                             it, or "abandoned"; deleted by the caller's next call once
                                             the reply arrived, and expiring after an hour in any case
        {P}:map                      hash    the map's identity: id, gen, made, from, until (recovering)
        {P}:expect, {P}:restored     set     while recovering: members to wait for, and those done
        {P}:alive                    zset    member -> time of its lease's last renewal
        {P}:probe                    string  written by health checks, expiring

    ``<cidr>`` and addresses are written by the script as Python 3.11's
    ``ipaddress`` writes them (``10.1.2.0/28``, ``fd00::/64``; IPv4-mapped IPv6
    addresses in hex groups, whatever the Python, so key names never depend on
    the host that wrote them); ``since`` is a Unix time; ``cursor`` is the last
    address claimed serially, or null. Everything a person needs is in the
    ``slot``, ``pools`` and ``addrs`` keys; the trees are the script's index.

    Python never builds a key name from ``str(network)``: it sends bit strings,
    and only parses the names the script wrote.

    Failures: every redis-py error becomes a StoreError (StoreUnavailable when
    Redis cannot be reached in time), and a script never stops half-way. A
    request that timed out here may still reach a stalled server later; it
    carries a deadline in the server's clock (learnt from the time in every
    reply), and the script drops it when late. A request may also have run in
    time and lost its reply (Redis stalled or died before answering). So every
    call that changes the map carries a random request id, under which the
    script records how to undo the change (``{P}:req:<id>``, in the same atomic
    step). When such a call fails with StoreUnavailable, the store remembers
    its id, and before its next call of any kind (and in ``close``) sends one
    "abandon" per remembered id: it undoes the change if it landed, or marks
    the id so that the request, should it arrive later, changes nothing. Until
    every abandon has gone through, each call fails with StoreUnavailable
    without being sent. So a StoreUnavailable means "nothing was changed" by
    the time this store does anything else; with nothing pending, every
    operation is still one round trip.

    The map's identity (``{P}:map``): the store attaches to the map at its first
    call (it joins the map there is, or makes one that recovers for
    ``recovery_window`` seconds), then sends the map's id and the highest
    generation it has seen with every call; the script checks both in the same
    atomic step as the operation. A map that is gone, has another id or went back
    in generation raises MapLost and changes nothing: see ``stores.recovery`` for
    rebuilding it. With ``durability`` (``?wait_replicas=``, ``?wait_aof=``), a
    change is acknowledged only once WAIT / WAITAOF, sent in the same round trip,
    say it reached that many replicas or disks; else it is undone and refused.
    """

    TRAITS = SHARED

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        where: str | None = None,
        timeout: float | None = None,
        read_only: bool = False,
        member: str = "",
        recovery_window: float = 0.0,
        durability: Durability | None = None,
        watch: ServerWatch | None = None,
    ) -> None:
        """Use ``client``; does no network I/O, so an unreachable Redis only fails the first call.

        ``where`` names the server in error messages (default: from the client's
        connection settings, without credentials); ``timeout`` is only quoted in
        them (default: the client's socket timeout); ``read_only`` refuses every
        call that would change the map (and never makes a map). ``member`` is the
        name this process goes by on the map (mini-ipam passes its host id);
        ``recovery_window`` how long a map this store makes waits before it hands
        out blocks (see ``stores.recovery``); ``watch`` tells it when the server changes.
        """
        urls.check_prefix(prefix)
        self.read_only = read_only
        self._client = client
        self._prefix = prefix
        self._keys = f"{{{prefix}}}:"
        self._anchor = [f"{self._keys}settings"]
        kwargs = connect.settings_of(client)
        self._where = where or urls.describe(kwargs)
        self._timeout = timeout if timeout is not None else kwargs.get("socket_timeout")
        self._password = kwargs.get("password")
        self._clock: _Clock | None = None
        self._script = client.register_script(SCRIPT)
        self._pending: list[str] = []  # ids of calls that failed with StoreUnavailable, oldest first
        self._pending_lock = threading.Lock()
        self._settle_failed: StoreError | None = None  # why the last abandon failed; None after a success
        self.member = member
        self.recovery_window = recovery_window
        self.durability = durability or Durability()
        self.watch = watch or ServerWatch()
        self._identity: MapIdentity | None = None
        self._identity_lock = threading.Lock()
        self.auto_attach = True  # attach at the first call; off when a RecoveringStore attaches it
        self._answered: deque[str] = deque()  # request ids whose replies arrived, to confirm

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 5.0,
        read_only: bool = False,
        member: str = "",
        recovery_window: float = 0.0,
    ) -> RedisStore:
        """Open the store a ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://`` or ``redis+cluster://``
        URL names (see ``stores.redis.connect``).

        ``?prefix=NAME`` (default ``mini-ipam``) selects the map; ``?db=N`` the
        database; ``rediss://`` also takes ``ssl_cert_reqs``, ``ssl_ca_certs``,
        ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname``
        (so do ``rediss+sentinel://`` and ``rediss+cluster://``; a Sentinel URL also
        ``sentinel_username`` and ``sentinel_password``, see ``urls.split_seeds_url``).
        ``timeout`` bounds every connect and every round trip; nothing is retried.
        ``read_only`` refuses every call that would change the map, for listings.
        ``wait_replicas=N``, ``wait_aof=N`` and ``wait_timeout=DURATION`` ask for
        durable acknowledgements (see ``urls.Durability``). ``member`` and
        ``recovery_window``: see ``__init__``. Raises ConfigurationError for
        anything else. Connects lazily.
        """
        if not timeout > 0:
            raise ConfigurationError(f"the store timeout must be a positive number of seconds, not {timeout!r}")
        watch = ServerWatch()
        opened = connect.open_url(url, timeout=timeout, watch=watch)
        return cls(
            opened.client,
            opened.prefix,
            where=opened.where,
            timeout=timeout,
            read_only=read_only,
            member=member,
            recovery_window=recovery_window,
            durability=opened.durability,
            watch=watch,
        )

    @property
    def traits(self) -> StoreTraits:
        """What kind of store this is: a shared one."""
        return self.TRAITS

    def lease(self, name: str, record: dict[str, Any], ttl: float) -> Lease | None:
        """A lease on ``{P}:host:<name>``, with its notes in ``{P}:twins:<name>`` (see ``RedisLease``)."""
        return RedisLease(self._client, self._keys, name, record, ttl)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client the store talks through."""
        return self._client

    @property
    def where(self) -> str:
        """The server, as messages name it (without credentials)."""
        return self._where

    @property
    def prefix(self) -> str:
        """The key prefix: the map's name on this Redis."""
        return self._prefix

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self._prefix!r})"

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
        now = time.time()
        block_json = codec.dumps({"owner": owner, "label": label, "since": now})
        # The script rewrites the cursor by text: it must stay the last member.
        pool_json = codec.dumps({"owner": owner, "since": now, "cursor": None})
        if isinstance(target, ExactSubnet):
            subnet = target.subnet
            share = ["1", share_label] if share_label is not None else ["0", ""]
            reply = self._change("open_exact", subnet.version, codec.bits(subnet), scope, block_json, pool_json, *share)
        else:
            parents = [part for parent in target.parents for part in (parent.version, codec.bits(parent))]
            reply = self._change("open_any", scope, block_json, pool_json, target.prefixlen, *parents)
        status = reply[0]
        if status == "granted":
            _, family, bits, held_json, existing_json, created = reply
            block = codec.block(codec.network(family, bits), held_json)
            return Granted(codec.pool_info(block, scope, existing_json), created=created == 1)
        if status == "overlap":
            _, family, bits, held_json = reply
            return Overlap(codec.block(codec.network(family, bits), held_json))
        return NoFreeSubnet()

    def close_pool(self, subnet: Network, scope: str) -> ClosedPool | None:
        reply = self._change("close", subnet.version, codec.bits(subnet), scope)
        if reply[0] == "absent":
            return None
        _, pool_json, block_json, freed = reply
        return ClosedPool(codec.pool_info(codec.block(subnet, block_json), scope, pool_json), freed == 1)

    def pool(self, subnet: Network, scope: str) -> PoolInfo | None:
        reply = self._call("pool", subnet.version, codec.bits(subnet), scope)
        if reply[0] == "absent":
            return None
        _, pool_json, block_json = reply
        return codec.pool_info(codec.block(subnet, block_json), scope, pool_json)

    def claim_address(self, subnet: Network, scope: str, address: Address, note: str = "") -> bool:
        """See ``Store.claim_address``; an address outside ``subnet`` raises ValueError."""
        rel = codec.rel_bits(subnet, address)
        reply = self._change("claim", subnet.version, codec.bits(subnet), scope, rel, codec.address_json(note))
        return codec.known(reply, subnet, scope) == "claimed"

    def claim_next_address(
        self, subnet: Network, scope: str, first: Address, last: Address, serial: bool, note: str = ""
    ) -> Address | None:
        bounds = codec.clamp(subnet, first, last)
        low, high = bounds if bounds is not None else ("-", "-")
        reply = self._change(
            "claim_next", subnet.version, codec.bits(subnet), scope, low, high, int(serial), codec.address_json(note)
        )
        if codec.known(reply, subnet, scope) != "claimed":
            return None
        return codec.address(subnet, reply[1])

    def release_address(self, subnet: Network, scope: str, address: Address) -> bool:
        """See ``Store.release_address``; an address outside ``subnet`` raises ValueError."""
        rel = codec.rel_bits(subnet, address)
        reply = self._change("release", subnet.version, codec.bits(subnet), scope, rel)
        return codec.known(reply, subnet, scope) == "released"

    def blocks(self) -> list[Block]:
        """Every block, read with SCAN and MGET: a listing, not a hot path."""
        self._settle()
        with self._reaching():
            cidrs = self._scan("slot")
            values = self._client.mget([f"{self._keys}slot:{cidr}" for cidr in cidrs]) if cidrs else []
        return [
            codec.block(codec.parse_network(cidr), value)
            for cidr, value in zip(cidrs, values, strict=True)
            if value is not None  # freed between SCAN and MGET
        ]

    def pools(self) -> list[PoolInfo]:
        """Every pool, read with SCAN and one pipeline of HGETALL and GET: a listing, not a hot path."""
        self._settle()
        with self._reaching():
            cidrs = self._scan("pools")
            pipe = self._client.pipeline(transaction=False)
            for cidr in cidrs:
                pipe.hgetall(f"{self._keys}pools:{cidr}")
                pipe.get(f"{self._keys}slot:{cidr}")
            replies = pipe.execute() if cidrs else []
        found: list[PoolInfo] = []
        for cidr, scopes, block_json in zip(cidrs, replies[::2], replies[1::2], strict=True):
            if block_json is None:
                continue  # freed between SCAN and the pipeline
            block = codec.block(codec.parse_network(cidr), block_json)
            found.extend(codec.pool_info(block, codec.text(scope), pool_json) for scope, pool_json in scopes.items())
        return found

    def usage(self, parents: Sequence[Network]) -> list[ParentUsage] | None:
        """Each parent's usage from the counters the script keeps beside the tree: one script call.

        A parent not counted yet is counted from now on (the script walks the tree once for
        it); a read-only store does not start counting, and answers None for such a parent,
        so that its caller scans instead.
        """
        args: list[str | int] = ["0" if self.read_only else "1"]
        for parent in parents:
            args += [parent.version, codec.bits(parent)]
        reply = self._call("usage", *args)
        found: list[ParentUsage] = []
        fields = iter(reply[1:])
        for parent in parents:
            next(fields), next(fields)  # the family and bits, as asked
            largest = next(fields)
            if largest == "untracked":
                return None
            counters = {str(name): int(value) for name, value in _pairs(fields, int(next(fields)))}
            found.append(
                ParentUsage(
                    parent=parent,
                    blocks_by_size=_by_length(counters, "b"),
                    addresses_by_size=_by_length(counters, "a"),
                    around=counters.get("around", 0),
                    largest_free=None if largest == "-" else int(largest),
                )
            )
        return found

    def address_claims(self, subnet: Network, scope: str) -> list[AddressClaim]:
        reply = self._call("addresses", subnet.version, codec.bits(subnet), scope)
        codec.known(reply, subnet, scope)
        claims = []
        for text, value in zip(reply[1::2], reply[2::2], strict=True):
            record = codec.decode(value, f"address {text} of {subnet} {scope!r}")
            claims.append(
                AddressClaim(codec.parse_address(text), float(record.get("since", 0.0)), record.get("note", ""))
            )
        return sorted(claims, key=lambda claim: int(claim.address))

    def ping(self) -> None:
        """One PING round trip (on a cluster, to the node serving the map); StoreUnavailable when Redis does not
        answer in time."""
        self._settle()
        with self._reaching():
            connect.node_at(self._client, self._anchor[0]).ping()

    def setting(self, name: str) -> str | None:
        reply = self._call("setting", name)
        return str(reply[1]) if reply[0] == "found" else None

    def make_setting(self, name: str, value: str) -> str:
        return str(self._change("make_setting", name, value)[1])

    def close(self) -> None:
        """Abandon the calls that failed unanswered, then close the client and every connection of its pool.

        The connections are closed even when an abandon fails; its error is raised afterwards.
        """
        try:
            self._settle()
        finally:
            with self._reaching():
                connect.disconnect(self._client)

    # -- talking to Redis -------------------------------------------------

    def _scan(self, kind: str) -> list[str]:
        """The ``<cidr>`` of every ``{P}:<kind>:<cidr>`` key, each once (SCAN may repeat keys)."""
        head = f"{self._keys}{kind}:"
        names = (codec.text(key) for key in connect.scan_at(self._client, self._anchor[0], f"{head}*", 1000))
        return list(dict.fromkeys(name[len(head) :] for name in names))

    def _change(self, op: str, *args: str | int, identity: MapIdentity | None = _CURRENT) -> list[Any]:
        """Run an operation that may change the map, under a fresh request id.

        When it fails with StoreUnavailable without an answer, it may still have
        run, or run later: its id is kept, to be abandoned before the next call.
        """
        if self.read_only:
            raise StoreError(f"the store at {self._where} was opened read-only: {op} would change the map")
        request = _request_id()
        try:
            reply = self._call(op, *args, request=request, identity=identity)
        except _ANSWERED:
            raise  # the script answered that it did not run it
        except StoreUnavailable:
            with self._pending_lock:
                self._pending.append(request)
            raise
        self._answered.append(request)
        return reply

    def _settle(self) -> None:
        """Abandon every call that failed unanswered, oldest first: one script call each.

        Costs nothing when none is pending. Raises (keeping the rest pending)
        when an abandon fails, so no other call runs while Redis is still away.
        A call that finds another thread abandoning waits for it (at most the
        timeout), and fails at once when that attempt failed: it does not try
        again, so no answer takes more than about one timeout.
        """
        if not self._pending:
            return
        waited = not self._pending_lock.acquire(blocking=False)
        if waited and not self._pending_lock.acquire(timeout=self._timeout if self._timeout is not None else -1):
            raise StoreUnavailable(f"redis at {self._where} did not answer within {self._timeout}s")
        try:
            if waited and self._pending and self._settle_failed is not None:
                failed = self._settle_failed
                raise StoreUnavailable(f"redis at {self._where} is still away: {failed}") from failed
            while self._pending:
                try:
                    self._send("abandon", self._pending[0], (), deadline=False)
                except StoreError as exc:
                    self._settle_failed = exc
                    raise
                del self._pending[0]
            self._settle_failed = None
        finally:
            self._pending_lock.release()

    def _call(self, op: str, *args: str | int, request: str = "", identity: MapIdentity | None = _CURRENT) -> list[Any]:
        """Run one operation of the script: one EVALSHA (three commands after a NOSCRIPT).

        Abandons the calls that failed unanswered first (see ``_settle``), and
        attaches to the map the first time (see ``attach``). Returns the reply
        after its server time and the map's generation, with every bulk string
        decoded to ``str``. A call that reached the server after its deadline, or
        after its request was abandoned, changed nothing and raises
        StoreUnavailable, like one that timed out here.
        """
        self._settle()
        if identity is _CURRENT and self._identity is None and not self.read_only:
            if not self.auto_attach:
                raise StoreUnavailable(f"the address map on redis at {self._where} is not attached yet")
            self.attach()
        return self._send(op, request, args, identity=identity)

    def _send(
        self,
        op: str,
        request: str,
        args: Sequence[str | int],
        *,
        deadline: bool = True,
        identity: MapIdentity | None = _CURRENT,
    ) -> list[Any]:
        """One EVALSHA of the script (with WAIT / WAITAOF after it, for a durable change); see ``_call``.

        ``identity``: the map id and generation the call is made under (default: the store's).
        """
        if identity is _CURRENT:
            identity = self._identity
        known = "*" if identity is None else identity.id
        confirmed = " ".join(self._take_answered()) if request and op != "abandon" else ""
        seen = f"{identity.gen} {identity.own}" if identity else "0 0"
        header: list[str | int] = [op, self._keys, 0, request, known, seen, self.member]
        header.append(confirmed)
        sent = time.monotonic()
        if deadline:
            header[2] = self._deadline(sent)
        durable = bool(request) and self.durability.wanted and op != "abandon"
        waited: list[Any] = []
        with self._reaching():
            if durable:
                raw, waited = self._send_durably([*header, *args])
            else:
                raw = self._script(keys=self._anchor, args=[*header, *args])
        received = time.monotonic()
        if not isinstance(raw, list) or len(raw) < 4:
            raise CorruptState(f"unexpected reply {raw!r} from the mini-ipam script on {self._where}")
        stamp, gen, own, *reply = [codec.text(item) if isinstance(item, bytes) else item for item in raw]
        self._observe(int(stamp), sent, received)
        status = reply[0]
        if status == "expired":
            raise _Dropped(
                f"redis at {self._where} did not answer within {self._timeout}s "
                "(the request reached it too late, or after it was abandoned, and was dropped)"
            )
        if status == "lost":
            raise self._lost(reply[1], reply[2], int(reply[3]))
        if status == "recovering":
            until = int(reply[1]) / 1e6
            raise MapRecovering(
                f"the address map on redis at {self._where} is new or being rebuilt after a loss: no new subnet "
                "until every host that held claims in it has re-asserted them, "
                f"or {max(0.0, until - time.time()):.0f}s at the latest",
                until,
            )
        if identity is self._identity:
            self._saw_generation(int(gen), int(own))
        if durable:
            self._check_durable(request, waited)
        return reply

    def _take_answered(self) -> list[str]:
        """Request ids whose replies arrived, at most ``_CONFIRM_AT_MOST`` (each popped once, thread-safely)."""
        taken: list[str] = []
        while self._answered and len(taken) < _CONFIRM_AT_MOST:
            try:
                taken.append(self._answered.popleft())
            except IndexError:
                break
        return taken

    def _send_durably(self, args: list[Any]) -> tuple[Any, list[Any]]:
        """EVALSHA and, in the same round trip on the same connection, WAIT and/or WAITAOF."""
        for attempt in (1, 2):
            pipe = connect.pipeline_at(self._client, self._anchor[0])
            pipe.execute_command("EVALSHA", self._script.sha, 1, *self._anchor, *args)  # type: ignore[no-untyped-call]
            for command in self.durability.commands():
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            first = results[0]
            if isinstance(first, redis.exceptions.NoScriptError) and attempt == 1:
                self._client.script_load(SCRIPT)
                continue
            if isinstance(first, Exception):
                raise first
            # The change ran: a wait that failed outright is a wait that fell short (undone by the caller).
            return first, [None if isinstance(result, Exception) else result for result in results[1:]]
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_durable(self, request: str, waited: list[Any]) -> None:
        """Undo and refuse a change the server could not make durable as asked."""
        short = self.durability.shortfall(waited)
        if short is None:
            return
        try:
            self._send("abandon", request, (), deadline=False)
        except StoreError:
            with self._pending_lock:
                self._pending.append(request)
        raise StoreUnavailable(f"redis at {self._where} could not make the change durable ({short}); it was undone")

    def _lost(self, why: str, found_id: str, found_gen: int) -> MapLost:
        """The MapLost for a script's "lost" reply."""
        found = MapIdentity(found_id, found_gen) if found_id else None
        known = self._identity
        text = {
            "absent": "it has no identity any more: the data was flushed, evicted, or the server came back empty",
            "replaced": f"it is another map now (id {found_id}), made by a member that found it lost",
            "behind": "it went back to an older generation than this driver saw (the map's is "
            f"{found_gen}, this driver saw {known.gen if known else 0}, its own last change "
            f"{known.own if known else 0}): the server came back from an older copy, or a replica "
            "without the latest writes took over",
        }.get(why, why)
        return MapLost(f"the address map on redis at {self._where} was lost: {text}", why, found)

    def _saw_generation(self, gen: int, own: int) -> None:
        identity = self._identity
        if identity is not None and (gen > identity.gen or own > identity.own):
            with self._identity_lock:
                current = self._identity
                if current is not None and current.id == identity.id:
                    self._identity = MapIdentity(current.id, max(gen, current.gen), max(own, current.own))

    # -- the map's identity -----------------------------------------------

    @property
    def identity(self) -> MapIdentity | None:
        """The map this store works on, and the highest generation it has seen; None before it attached."""
        return self._identity

    def adopt(self, identity: MapIdentity | None) -> None:
        """Work on the map ``identity`` from now on (a recovery that re-asserted this member's claims)."""
        with self._identity_lock:
            self._identity = identity

    def check_server(self) -> None:
        """ConfigurationError when the server lacks a command the store's options need (WAITAOF)."""
        if self.durability.aof_replicas is None:
            return
        with self._reaching():
            try:
                connect.node_at(self._client, self._anchor[0]).execute_command("WAITAOF", 1, 0, 1)  # type: ignore[no-untyped-call]
                return
            except redis.ResponseError as exc:
                if "appendonly" in str(exc).lower():
                    raise ConfigurationError(
                        f"wait_aof waits for the server's append-only file, and the server at {self._where} "
                        f"keeps none ({exc}): turn appendonly on (appendfsync always), or drop wait_aof"
                    ) from None
                if "unknown command" not in str(exc).lower():
                    raise
            info = connect.node_at(self._client, self._anchor[0]).info("server")
        server = "Valkey" if "valkey_version" in info else "Redis"
        version = info.get("valkey_version") or info.get("redis_version")
        raise ConfigurationError(
            f"wait_aof needs WAITAOF (Redis 7.2 or later, Valkey 8 or later), and the server at {self._where} is "
            f"{server} {version}: drop wait_aof, or use wait_replicas"
        )

    def attach(self) -> MapIdentity:
        """Join the map there is, or make one (recovering for ``recovery_window``); the identity it works on."""
        with self._identity_lock:
            if self._identity is not None:
                return self._identity
        made, _ = self.recover(known=None)
        self.adopt(made.identity)
        assert made.identity is not None
        return made.identity

    def status(self, *, probe: bool = False, alive_within: float = 60.0) -> MapStatus:
        """The map as it is now, with the members alive in the last ``alive_within`` seconds.

        With ``probe`` it also writes an expiring ``{P}:probe``: proof that the server takes writes and
        runs this store's script (a read-only replica, a Sentinel port or a user without script rights fail).
        """
        self._settle()
        reply = self._send("status", "", ("1" if probe else "0", int(time.time() - alive_within)))
        return _status(reply[1:])

    def recover(
        self,
        known: MapIdentity | None,
        *,
        window: float | None = None,
        expect: Sequence[str] = (),
        settings: dict[str, str] | None = None,
    ) -> tuple[MapStatus, bool]:
        """Make a map where there is none, or replace ``known`` if it went back in generation; else join it.

        A map made here recovers for ``window`` seconds (default ``recovery_window``)
        or until every member of ``expect`` has re-asserted its claims, and gets
        ``settings`` (written only where none is stored). Returns the map, and
        whether this call made it.
        """
        window = self.recovery_window if window is None else window
        args: list[str | int] = [known.id if known else "", int(window * 1e6), secrets.token_hex(16)]
        args += ["expect", *expect, "settings"]
        for name, value in (settings or {}).items():
            args += [name, value]
        self._settle()
        reply = self._send("recover", "", args, deadline=False, identity=known)
        made, map_id, gen, until, own = reply[0] == "made", reply[1], int(reply[2]), int(reply[3]), int(reply[4])
        return (
            MapStatus(MapIdentity(map_id, gen, own), recovering_until=until / 1e6 if until else None, replaced=""),
            made,
        )

    def restore(self, pool: PoolInfo, claims: Sequence[AddressClaim], identity: MapIdentity) -> Overlap | int:
        """Put ``pool`` back as it was recorded, with ``claims``, into the map ``identity`` (a recovering one,
        before this store adopts it); the addresses added, or what overlaps it."""
        subnet = pool.subnet
        block_json = codec.dumps({"owner": pool.block.owner, "label": pool.block.label, "since": pool.block.since})
        pool_json = codec.dumps({"owner": pool.owner, "since": pool.since, "cursor": None})
        args: list[str | int] = [subnet.version, codec.bits(subnet), pool.scope, block_json, pool_json]
        for claim in claims:
            record: dict[str, Any] = {"since": claim.since}
            if claim.note:
                record["note"] = claim.note
            args += [codec.rel_bits(subnet, claim.address), codec.dumps(record)]
        reply = self._change("restore", *args, identity=identity)
        if reply[0] == "overlap":
            _, family, bits, held_json = reply
            return Overlap(codec.block(codec.network(family, bits), held_json))
        return int(reply[1])

    def discard(self, subnet: Network, scope: str, identity: MapIdentity) -> bool:
        """Close a pool of the map ``identity`` (a recovering one, before this store adopts it): a pool the
        map holds that its owner's record does not (released after the copy the map came back from)."""
        reply = self._change("close", subnet.version, codec.bits(subnet), scope, identity=identity)
        return bool(reply[0] == "closed")

    def cleaned(self, identity: MapIdentity) -> None:
        """Say this member has dropped, from the recovering map ``identity``, what it had released."""
        self._settle()
        self._send("cleaned", "", (), identity=identity)

    def restore_setting(self, name: str, value: str, identity: MapIdentity) -> str:
        """Put a setting back into the map ``identity`` unless another value is stored; the stored value."""
        return str(self._change("restore_setting", name, value, identity=identity)[1])

    def restored(self, identity: MapIdentity) -> float | None:
        """Say this member has re-asserted everything into ``identity``; until when that map still recovers."""
        self._settle()
        until = int(self._send("restored", "", (), identity=identity)[1])
        return until / 1e6 if until else None

    def _deadline(self, sent: float) -> int:
        """The server time (Unix µs) after which this call must not run; 0 when unknown.

        A request that timed out here may still reach a stalled server later. The
        script refuses it then, so a timeout always means "nothing changed". The
        deadline comes before our own timeout by the clock offset's uncertainty
        plus a margin for the reply's way back: the server gives up first.
        """
        clock = self._clock
        if clock is None or self._timeout is None:
            return 0  # until a first reply tells us the server's clock
        budget = int(self._timeout * (1 - _DEADLINE_MARGIN) * 1e6)
        return int(sent * 1e6) + clock.offset + budget - clock.error

    def _observe(self, server_time: int, sent: float, received: float) -> None:
        """Learn the server clock's offset from a reply (error: half the round trip)."""
        round_trip = received - sent
        if self._clock is not None and self._timeout is not None and round_trip > self._timeout / 4:
            return  # a slow reply says too little; keep the better sample
        middle = int((sent + received) / 2 * 1e6)
        self._clock = _Clock(offset=server_time - middle, error=int(round_trip / 2 * 1e6) + 1)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Translate every failure to talk to Redis into a StoreError that names the server.

        The messages quote the server as ``where`` (never with its password) and
        scrub the password from any text redis-py supplied.
        """
        try:
            yield
        except redis.AuthenticationError as exc:
            raise StoreError(f"redis at {self._where} refused the credentials: {self._scrub(exc)}") from exc
        except (redis.TimeoutError, TimeoutError) as exc:
            within = f"within {self._timeout}s" if self._timeout is not None else "in time"
            raise StoreUnavailable(f"redis at {self._where} did not answer {within}") from exc
        except MasterNotFoundError as exc:
            refused = any(word in str(exc) for word in ("AuthenticationError", "NOAUTH", "WRONGPASS"))
            why = (
                "the sentinels refused the credentials: give theirs as ?sentinel_password= (and sentinel_username=)"
                if refused
                else "every sentinel is away, or a failover is under way; try again"
            )
            raise StoreUnavailable(f"no sentinel of {self._where} names a primary now ({why})") from exc
        except (redis.ConnectionError, OSError) as exc:
            raise StoreUnavailable(f"could not reach redis at {self._where}: {self._scrub(exc)}") from exc
        except (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError, RedisClusterException) as exc:
            raise StoreUnavailable(
                f"the cluster at {self._where} cannot serve the map's slot now ({self._scrub(exc)}); try again"
            ) from exc
        except redis.exceptions.AskError as exc:  # MOVED too
            if connect.is_cluster(self._client):  # still redirected after following: the slot is on its way
                raise StoreUnavailable(
                    f"the cluster at {self._where} is moving the map's slot (to {exc.host}:{exc.port}); try again"
                ) from exc
            raise StoreError(
                f"redis at {self._where} is a Redis Cluster node that does not serve the map's slot "
                f"(slot {exc.slot_id} is at {exc.host}:{exc.port}): name the cluster, "
                "redis+cluster://host1:port,host2:port"
            ) from exc
        except redis.ResponseError as exc:
            message = self._scrub(exc)
            if "non local key" in message and connect.is_cluster(self._client):
                raise StoreUnavailable(
                    f"the cluster at {self._where} is moving the map's slot to another node; try again"
                ) from exc
            if message.startswith("CORRUPT"):
                raise CorruptState(f"redis at {self._where}: {message}") from exc
            raise StoreError(f"redis at {self._where} refused the request: {message}{_hint(message)}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis at {self._where} failed: {self._scrub(exc)}") from exc

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc)
        if self._password:
            text = text.replace(self._password, "***")
        return text


_HINTS = (
    ("read only replica", "point the store at the primary, or name the Sentinels (redis+sentinel://)"),
    ("no permissions", "the store's user needs +@scripting, +@read, +@write and the map's keys"),
    ("unknown command 'evalsha'", "this is no Redis that runs scripts: a Sentinel's port?"),
    ("unknown command `evalsha`", "this is no Redis that runs scripts: a Sentinel's port?"),
    ("oom command not allowed", "the server is out of memory (maxmemory): claims cannot be made"),
)


def _pairs(fields: Iterator[Any], count: int) -> Iterator[tuple[Any, Any]]:
    """The next ``count`` (name, value) pairs of a flat reply."""
    for _ in range(count):
        yield next(fields), next(fields)


def _by_length(counters: dict[str, int], kind: str) -> dict[int, int]:
    """The counters ``<kind><prefix length>`` that are not zero, by prefix length."""
    return {
        int(name[1:]): value for name, value in counters.items() if name[0] == kind and name[1:].isdigit() and value
    }


def _hint(message: str) -> str:
    """What to do about a refusal users meet, when it is one of those."""
    lower = message.lower()
    return next((f" ({hint})" for known, hint in _HINTS if known in lower), "")


def _status(fields: Sequence[Any]) -> MapStatus:
    """A MapStatus from the "status" reply: id, gen, made, until, from, alive members, the member's own."""
    map_id, gen, made, until, replaced, alive, own, expected, restored, cleaned = fields
    return MapStatus(
        MapIdentity(map_id, int(gen), int(own)) if map_id else None,
        made=int(made) / 1e6,
        recovering_until=int(until) / 1e6 if int(until) else None,
        replaced=replaced,
        alive=frozenset(str(alive).split()),
        expected=frozenset(str(expected).split()),
        restored=frozenset(str(restored).split()),
        cleaned=frozenset(str(cleaned).split()),
    )
