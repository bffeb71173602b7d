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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

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
    Network,
    NoFreeSubnet,
    Overlap,
    PoolInfo,
    StoreError,
    StoreTraits,
    StoreUnavailable,
)
from stores.redis import codec, urls
from stores.redis.lease import RedisLease
from stores.redis.urls import DEFAULT_PREFIX

SCRIPT = resources.files("stores.redis").joinpath("scripts.lua").read_text(encoding="utf-8")

# The share of the timeout kept between the script's deadline and our own.
_DEADLINE_MARGIN = 0.1


def _request_id() -> str:
    """A fresh name for one call that changes the map (``{P}:req:<id>``)."""
    return secrets.token_hex(16)


class _Dropped(StoreUnavailable):
    """The script answered that it did not run the call (too late, or already abandoned)."""


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
                                             it, or "abandoned"; expires after an hour

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
    ) -> None:
        """Use ``client``; does no network I/O, so an unreachable Redis only fails the first call.

        ``where`` names the server in error messages (default: from the client's
        connection settings, without credentials); ``timeout`` is only quoted in
        them (default: the client's socket timeout); ``read_only`` refuses every
        call that would change the map.
        """
        urls.check_prefix(prefix)
        self.read_only = read_only
        self._client = client
        self._prefix = prefix
        self._keys = f"{{{prefix}}}:"
        self._anchor = [f"{self._keys}settings"]
        kwargs = getattr(client.connection_pool, "connection_kwargs", {})
        self._where = where or urls.describe(kwargs)
        self._timeout = timeout if timeout is not None else kwargs.get("socket_timeout")
        self._password = kwargs.get("password")
        self._clock: _Clock | None = None
        self._script = client.register_script(SCRIPT)
        self._pending: list[str] = []  # ids of calls that failed with StoreUnavailable, oldest first
        self._pending_lock = threading.Lock()
        self._settle_failed: StoreError | None = None  # why the last abandon failed; None after a success

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 5.0, read_only: bool = False) -> RedisStore:
        """Open the store a ``redis://``, ``rediss://`` or ``unix://`` URL names.

        ``?prefix=NAME`` (default ``mini-ipam``) selects the map; ``?db=N`` the
        database; ``rediss://`` also takes ``ssl_cert_reqs``, ``ssl_ca_certs``,
        ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_check_hostname``.
        ``timeout`` bounds every connect and every round trip; nothing is retried.
        ``read_only`` refuses every call that would change the map, for listings.
        Raises ConfigurationError for anything else. Connects lazily.
        """
        if not timeout > 0:
            raise ConfigurationError(f"the store timeout must be a positive number of seconds, not {timeout!r}")
        client_url, prefix = urls.split_url(url)
        client = redis.Redis.from_url(
            client_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, prefix, where=urls.where(client_url), timeout=timeout, read_only=read_only)

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
        """One PING round trip; StoreUnavailable when Redis does not answer in time."""
        self._settle()
        with self._reaching():
            self._client.ping()

    def setting(self, name: str, default: str) -> str:
        reply = self._call("setting", name, default)
        return str(reply[1])

    def close(self) -> None:
        """Abandon the calls that failed unanswered, then close the client and every connection of its pool.

        The connections are closed even when an abandon fails; its error is raised afterwards.
        """
        try:
            self._settle()
        finally:
            with self._reaching():
                self._client.close()
                self._client.connection_pool.disconnect()

    # -- talking to Redis -------------------------------------------------

    def _scan(self, kind: str) -> list[str]:
        """The ``<cidr>`` of every ``{P}:<kind>:<cidr>`` key, each once (SCAN may repeat keys)."""
        head = f"{self._keys}{kind}:"
        names = (codec.text(key) for key in self._client.scan_iter(match=f"{head}*", count=1000))
        return list(dict.fromkeys(name[len(head) :] for name in names))

    def _change(self, op: str, *args: str | int) -> list[Any]:
        """Run an operation that may change the map, under a fresh request id.

        When it fails with StoreUnavailable without an answer, it may still have
        run, or run later: its id is kept, to be abandoned before the next call.
        """
        if self.read_only:
            raise StoreError(f"the store at {self._where} was opened read-only: {op} would change the map")
        request = _request_id()
        try:
            return self._call(op, *args, request=request)
        except _Dropped:
            raise  # the script answered that it did not run it
        except StoreUnavailable:
            with self._pending_lock:
                self._pending.append(request)
            raise

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

    def _call(self, op: str, *args: str | int, request: str = "") -> list[Any]:
        """Run one operation of the script: one EVALSHA (three commands after a NOSCRIPT).

        Abandons the calls that failed unanswered first (see ``_settle``).
        Returns the reply after its server time, with every bulk string decoded
        to ``str``. A call that reached the server after its deadline, or after
        its request was abandoned, changed nothing and raises StoreUnavailable,
        like one that timed out here.
        """
        self._settle()
        return self._send(op, request, args)

    def _send(self, op: str, request: str, args: Sequence[str | int], *, deadline: bool = True) -> list[Any]:
        """One EVALSHA of the script; see ``_call``."""
        sent = time.monotonic()
        limit = self._deadline(sent) if deadline else 0
        with self._reaching():
            raw = self._script(keys=self._anchor, args=[op, self._keys, limit, request, *args])
        received = time.monotonic()
        if not isinstance(raw, list) or len(raw) < 2:
            raise CorruptState(f"unexpected reply {raw!r} from the mini-ipam script on {self._where}")
        stamp, *reply = [codec.text(item) if isinstance(item, bytes) else item for item in raw]
        self._observe(int(stamp), sent, received)
        if reply[0] == "expired":
            raise _Dropped(
                f"redis at {self._where} did not answer within {self._timeout}s "
                "(the request reached it too late, or after it was abandoned, and was dropped)"
            )
        return reply

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
        except (redis.ConnectionError, OSError) as exc:
            raise StoreUnavailable(f"could not reach redis at {self._where}: {self._scrub(exc)}") from exc
        except redis.ResponseError as exc:
            message = self._scrub(exc)
            if message.startswith("CORRUPT"):
                raise CorruptState(f"redis at {self._where}: {message}") from exc
            raise StoreError(f"redis at {self._where} refused the request: {message}") from exc
        except redis.RedisError as exc:
            raise StoreError(f"redis at {self._where} failed: {self._scrub(exc)}") from exc

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc)
        if self._password:
            text = text.replace(self._password, "***")
        return text
