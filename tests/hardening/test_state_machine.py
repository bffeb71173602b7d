"""A stateful model test: random sequences of pool and address requests and releases, on every Store.

Two hosts' Allocators share one fresh store per example (memory, file, fakeredis,
and a real redis-server under a unique key prefix). A plain-Python model predicts
every outcome (the exact subnet or address granted, or the exact refusal), and
after every step the store must equal the model and obey the rules whatever the
model says: no overlapping blocks, every address inside its pool and off the
reserved addresses, released subnets and addresses claimable again, and at the
end, with everything released, each parent coalesced back into one free block.
"""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from mini_ipam.allocator import GLOBAL, LOCAL, SMALLEST, Allocator, PoolRequest, Settings
from mini_ipam.errors import AddressNotFound, Conflict, Exhausted, InvalidRequest, IpamError, PoolNotFound
from mini_ipam.pool_id import PoolId
from stores import Address, Network, Store
from tests.hardening.support import check_map
from tests.servers import RedisServer, over_families

PARENTS4 = (ipaddress.IPv4Network("10.0.0.0/26"), ipaddress.IPv4Network("10.0.1.0/27"))
PARENTS6 = (ipaddress.IPv6Network("fd00:ab::/122"),)
# Explicit subnets land inside the parents and around them.
AROUND = {4: ipaddress.IPv4Network("10.0.0.0/23"), 6: ipaddress.IPv6Network("fd00:ab::/120")}
HOSTS = ("h1", "h2")
SETTINGS = Settings(parents4=PARENTS4, parents6=PARENTS6, default_size4=28, default_size6=124)


@dataclass
class ModelPool:
    owner: str
    addresses: set[int] = field(default_factory=set)
    cursor: int | None = None
    gateways: set[int] = field(default_factory=set)  # addresses claimed as the gateway


@dataclass
class ModelBlock:
    subnet: Network
    label: str
    owner: str
    pools: dict[str, ModelPool] = field(default_factory=dict)


def scope_of(space: str, host: str) -> str:
    return GLOBAL if space == GLOBAL else f"{LOCAL}@{host}"


def label_of(space: str, ip_range: Network | None) -> str:
    return space if ip_range is None else f"{space} {ip_range}"


def is_shared(pool_id: PoolId, block: ModelBlock) -> bool:
    """A global pool, or a node's copy of one: requested more than once, by one network only."""
    return pool_id.space == GLOBAL or block.label == label_of(GLOBAL, pool_id.ip_range)


def usable(subnet: Network, ip_range: Network | None) -> tuple[int, int]:
    first = int(subnet.network_address) + 1
    last = int(subnet.broadcast_address) - (1 if subnet.version == 4 else 0)
    if ip_range is not None:
        first = max(first, int(ip_range.network_address))
        last = min(last, int(ip_range.broadcast_address))
    return first, last


def network(version: int, value: int, plen: int) -> Network:
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((value, plen), strict=False)


@st.composite
def exact_requests(draw: st.DrawFn) -> tuple[Network, Network | None, int | None, bool]:
    version = draw(st.sampled_from([4, 4, 6]))
    around = AROUND[version]
    plen = draw(st.integers(around.prefixlen, around.max_prefixlen - 1))
    offset = draw(st.integers(0, (1 << (plen - around.prefixlen)) - 1)) << (around.max_prefixlen - plen)
    subnet = network(version, int(around.network_address) + offset, plen)
    ip_range = None
    if draw(st.integers(0, 3)) == 0:
        rlen = draw(st.integers(plen, around.max_prefixlen))
        roff = draw(st.integers(-1, (1 << (rlen - plen)))) << (around.max_prefixlen - rlen)
        ip_range = network(version, (int(subnet.network_address) + roff) % (1 << around.max_prefixlen), rlen)
    size = draw(st.one_of(st.none(), st.none(), st.just(plen), st.integers(20, 126)))
    v6 = (version == 6) != (draw(st.integers(0, 15)) == 0)  # now and then the wrong family
    return subnet, ip_range, size, v6


@st.composite
def any_pool_ids(draw: st.DrawFn) -> PoolId:
    version = draw(st.sampled_from([4, 6]))
    around = AROUND[version]
    plen = draw(st.integers(around.prefixlen, SMALLEST[version]))
    offset = draw(st.integers(0, (1 << (plen - around.prefixlen)) - 1)) << (around.max_prefixlen - plen)
    return PoolId(draw(st.sampled_from([LOCAL, GLOBAL])), network(version, int(around.network_address) + offset, plen))


def address(version: int, value: int) -> Address:
    value = min(max(value, 0), (1 << (32 if version == 4 else 128)) - 1)
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


@dataclass
class Counts:
    examples: int = 0
    steps: int = 0  # rules run, each followed by the full check of the store against the model
    calls: int = 0  # Allocator calls made by those rules
    outcomes: Counter[str] = field(default_factory=Counter)


StoreMaker = Callable[[], tuple[Store, Callable[[], None]]]


def machine_for(make_store: StoreMaker, counts: Counts) -> type[RuleBasedStateMachine]:
    class AllocatorModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.store, self._cleanup = make_store()
            self.allocators = {h: Allocator(self.store, replace(SETTINGS, host_id=h)) for h in HOSTS}
            self.blocks: dict[Network, ModelBlock] = {}
            counts.examples += 1

        # -- helpers ------------------------------------------------------------

        def attempt(self, name: str, expected: type[IpamError] | None, call: Callable[[], Any]) -> Any:
            counts.calls += 1
            try:
                result = call()
            except IpamError as exc:
                counts.outcomes[f"{name}: {type(exc).__name__}"] += 1
                assert expected is not None, f"{name} refused ({type(exc).__name__}: {exc}); the model grants it"
                assert type(exc) is expected, f"{name}: {type(exc).__name__}: {exc}; the model expects {expected}"
                return None
            counts.outcomes[f"{name}: granted"] += 1
            assert expected is None, f"{name} granted {result}; the model expects {expected.__name__}"
            return result

        def overlapping(self, subnet: Network) -> ModelBlock | None:
            for block in self.blocks.values():
                if block.subnet.version == subnet.version and block.subnet.overlaps(subnet):  # type: ignore[arg-type]
                    return block
            return None

        def held_refs(self) -> list[tuple[str, str, PoolId]]:
            """(host, scope, PoolID) of every pool in the model, in a stable order."""
            refs = []
            for subnet in sorted(self.blocks, key=lambda s: (s.version, int(s.network_address))):
                block = self.blocks[subnet]
                ip_range = ipaddress.ip_network(block.label.split(" ", 1)[1]) if " " in block.label else None
                for scope in sorted(block.pools):
                    space, host = (GLOBAL, HOSTS[0]) if scope == GLOBAL else (LOCAL, scope.split("@", 1)[1])
                    refs.append((host, scope, PoolId(space, subnet, ip_range)))
            return refs

        # -- pools --------------------------------------------------------------

        @rule(
            host=st.sampled_from(HOSTS),
            space=st.sampled_from([LOCAL, LOCAL, LOCAL, GLOBAL, "bogus"]),
            v6=st.sampled_from([False, False, True]),
            data=st.data(),
        )
        def request_dynamic(self, host: str, space: str, v6: bool, data: st.DataObject) -> None:
            fitting = st.integers(121, 127) if v6 else st.integers(25, 31)
            self.dynamic(host, space, v6, data.draw(st.one_of(st.none(), fitting, fitting, st.integers(0, 129))))

        @rule(host=st.sampled_from(HOSTS), v6=st.sampled_from([False, False, True]), data=st.data())
        def fill_the_parents(self, host: str, v6: bool, data: st.DataObject) -> None:
            """Dynamic requests of one size until the parents are full, then one more: Exhausted."""
            size = data.draw(st.integers(123, 125) if v6 else st.integers(27, 29))
            for _ in range(40):
                if self.dynamic(host, LOCAL, v6, size) is None:
                    break

        def dynamic(self, host: str, space: str, v6: bool, size: int | None) -> Any:
            version = 6 if v6 else 4
            parents = PARENTS6 if v6 else PARENTS4
            want = (SETTINGS.default_size6 if v6 else SETTINGS.default_size4) if size is None else size
            expected: type[IpamError] | None = None
            granted: Network | None = None
            if space not in (LOCAL, GLOBAL):
                expected = InvalidRequest
            elif not min(p.prefixlen for p in parents) <= want <= SMALLEST[version]:
                expected = InvalidRequest
            else:
                for parent in parents:
                    if want < parent.prefixlen:
                        continue
                    granted = next((c for c in parent.subnets(new_prefix=want) if not self.overlapping(c)), None)
                    if granted is not None:
                        break
                expected = None if granted is not None else Exhausted
            request = PoolRequest(space=space, v6=v6, size=size)
            result = self.attempt("dynamic pool", expected, lambda: self.allocators[host].request_pool(request))
            if result is not None:
                assert result.subnet == granted, f"got {result.subnet}, the lowest free /{want} is {granted}"
                assert result.pool_id == PoolId(space, granted)
                self.blocks[granted] = ModelBlock(granted, space, host, {scope_of(space, host): ModelPool(host)})
            return result

        @rule(host=st.sampled_from(HOSTS), space=st.sampled_from([LOCAL, LOCAL, GLOBAL]), request=exact_requests())
        def request_exact(
            self, host: str, space: str, request: tuple[Network, Network | None, int | None, bool]
        ) -> None:
            subnet, ip_range, size, v6 = request
            self.claim_exact(host, space, subnet, ip_range, size, v6)

        def claim_exact(
            self, host: str, space: str, subnet: Network, ip_range: Network | None, size: int | None, v6: bool
        ) -> Any:
            version = subnet.version
            scope = scope_of(space, host)
            expected: type[IpamError] | None = None
            holder: ModelBlock | None = None
            if (6 if v6 else 4) != version or subnet.prefixlen > SMALLEST[version]:
                expected = InvalidRequest
            elif size is not None and size != subnet.prefixlen:
                expected = InvalidRequest
            elif ip_range is not None and (ip_range.version != version or not ip_range.subnet_of(subnet)):  # type: ignore[arg-type]
                expected = InvalidRequest
            elif ip_range is not None and usable(subnet, ip_range)[0] > usable(subnet, ip_range)[1]:
                expected = InvalidRequest  # a range of reserved addresses only
            else:
                holder = self.overlapping(subnet)
                shared = holder is not None and holder.subnet == subnet and holder.label == label_of(GLOBAL, ip_range)
                expected = Conflict if holder is not None and not shared else None
            request = PoolRequest(space=space, v6=v6, subnet=subnet, ip_range=ip_range, size=size)
            result = self.attempt("exact pool", expected, lambda: self.allocators[host].request_pool(request))
            if result is None:
                return None
            assert result.subnet == subnet and result.pool_id == PoolId(space, subnet, ip_range)
            if holder is None:
                self.blocks[subnet] = ModelBlock(subnet, label_of(space, ip_range), host)
            self.blocks[subnet].pools.setdefault(scope, ModelPool(host))
            return result

        def pick(self, data: st.DataObject) -> tuple[str, str, PoolId]:
            """A held pool mostly; sometimes one of another host, or one nobody holds."""
            refs = self.held_refs()
            how = data.draw(st.sampled_from(["held"] * 6 + ["other host", "random"]))
            if refs and how != "random":
                host, scope, pool_id = data.draw(st.sampled_from(refs))
                if how == "other host":
                    host = data.draw(st.sampled_from(HOSTS))
                return host, scope_of(pool_id.space, host), pool_id
            pool_id = data.draw(any_pool_ids())
            host = data.draw(st.sampled_from(HOSTS))
            return host, scope_of(pool_id.space, host), pool_id

        @rule(data=st.data())
        def release_pool(self, data: st.DataObject) -> None:
            host, scope, pool_id = self.pick(data)
            self.release(host, scope, pool_id)

        def release(self, host: str, scope: str, pool_id: PoolId) -> bool:
            """Release a pool; whether it was released."""
            block = self.blocks.get(pool_id.subnet)
            pool = block.pools.get(scope) if block is not None else None
            expected: type[IpamError] | None = None
            if pool is None:
                expected = PoolNotFound
            elif block is not None and is_shared(pool_id, block) and pool.gateways:
                expected = Conflict  # its network still lives: only a refused second network's rollback does this
            self.attempt("release pool", expected, lambda: self.allocators[host].release_pool(pool_id))
            if expected is not None:
                return False
            assert block is not None
            del block.pools[scope]
            if not block.pools:
                del self.blocks[pool_id.subnet]
            return True

        def release_gateways(self, host: str, scope: str, pool_id: PoolId) -> None:
            """Release a pool's gateways, as Docker does before it releases the pool."""
            pool = self.blocks[pool_id.subnet].pools[scope]
            for value in sorted(pool.gateways):
                self.allocators[host].release_address(pool_id, address(pool_id.subnet.version, value))
                pool.addresses.discard(value)
            pool.gateways.clear()

        @precondition(lambda self: self.blocks)
        @rule(data=st.data())
        def release_then_claim_the_same_subnet(self, data: st.DataObject) -> None:
            """A released subnet is free at once: the same request for it is granted."""
            host, scope, pool_id = data.draw(st.sampled_from(self.held_refs()))
            block = self.blocks[pool_id.subnet]
            last_pool = len(block.pools) == 1
            self.release_gateways(host, scope, pool_id)
            assert self.release(host, scope, pool_id)
            if last_pool:
                assert self.claim_exact(host, pool_id.space, pool_id.subnet, pool_id.ip_range, None,
                                        pool_id.subnet.version == 6) is not None  # fmt: skip

        @precondition(lambda self: any(b.label.startswith(GLOBAL) for b in self.blocks.values()))
        @rule(data=st.data(), host=st.sampled_from(HOSTS), space=st.sampled_from([LOCAL, GLOBAL]))
        def a_second_network_tries_a_shared_subnet(self, data: st.DataObject, host: str, space: str) -> None:
            """Exactly a global subnet again (a replay, a copy, or another network), its gateway, its rollback."""
            global_ids = [ref for ref in self.held_refs() if ref[1] == GLOBAL]
            if not global_ids:
                return
            _, _, held = data.draw(st.sampled_from(global_ids))
            subnet = held.subnet
            if self.claim_exact(host, space, subnet, held.ip_range, None, subnet.version == 6) is None:
                return
            pool_id, scope = PoolId(space, subnet, held.ip_range), scope_of(space, host)
            if not self.next_address(host, scope, pool_id, "gateway"):
                self.release(host, scope, pool_id)  # Docker's rollback of the refused network

        # -- addresses ----------------------------------------------------------

        @rule(data=st.data(), mode=st.sampled_from(["next", "next", "gateway", "serial", "explicit", "explicit"]))
        def request_address(self, data: st.DataObject, mode: str) -> None:
            host, scope, pool_id = self.pick(data)
            subnet = pool_id.subnet
            block = self.blocks.get(subnet)
            pool = block.pools.get(scope) if block is not None else None
            allocator = self.allocators[host]
            if mode == "explicit":
                offset = data.draw(st.one_of(st.integers(-1, 8), st.integers(-1, subnet.num_addresses)))
                explicit = address(subnet.version, int(subnet.network_address) + offset)
                self.claim_explicit(allocator, pool_id, pool, block, explicit)
                return
            self.next_address(host, scope, pool_id, mode)

        def next_address(self, host: str, scope: str, pool_id: PoolId, mode: str) -> bool:
            subnet = pool_id.subnet
            block = self.blocks.get(subnet)
            pool = block.pools.get(scope) if block is not None else None
            allocator = self.allocators[host]
            first, last = usable(subnet, pool_id.ip_range)
            expected: type[IpamError] | None = None
            granted: int | None = None
            if pool is None:
                expected = PoolNotFound
            elif (
                mode == "gateway"
                and block is not None
                and is_shared(pool_id, block)
                and (pool_id.space != GLOBAL or pool.gateways)
            ):
                expected = Conflict  # a copy names its gateway; a global pool has one: a second network
            elif mode == "gateway" and first not in pool.addresses:
                granted = first
            else:
                starts = [first]
                if mode == "serial" and pool.cursor is not None and first <= pool.cursor < last:
                    starts.insert(0, pool.cursor + 1)
                for start in starts:
                    granted = next((a for a in range(start, last + 1) if a not in pool.addresses), None)
                    if granted is not None:
                        break
                expected = None if granted is not None else Exhausted
            call = lambda: allocator.request_address(pool_id, gateway=mode == "gateway", serial=mode == "serial")  # noqa: E731
            result = self.attempt(f"{mode} address", expected, call)
            if result is None:
                return False
            assert pool is not None and granted is not None
            assert int(result.ip) == granted, f"got {result.ip}, the model picks {address(subnet.version, granted)}"
            assert result.network.prefixlen == subnet.prefixlen
            pool.addresses.add(granted)
            if mode == "serial":
                pool.cursor = granted
            if mode == "gateway":
                pool.gateways.add(granted)
            return True

        @precondition(lambda self: self.blocks)
        @rule(data=st.data(), serial=st.booleans(), count=st.integers(1, 8))
        def fill_a_pool(self, data: st.DataObject, serial: bool, count: int) -> None:
            """Several addresses in one held pool, up to Exhausted for the small ones."""
            host, scope, pool_id = data.draw(st.sampled_from(self.held_refs()))
            for _ in range(count):
                if not self.next_address(host, scope, pool_id, "serial" if serial else "next"):
                    break

        def claim_explicit(
            self,
            allocator: Allocator,
            pool_id: PoolId,
            pool: ModelPool | None,
            block: ModelBlock | None,
            address: Address,
        ) -> None:
            subnet = pool_id.subnet
            first, last = usable(subnet, None)
            expected: type[IpamError] | None = None
            if address.version != subnet.version or address not in subnet or not first <= int(address) <= last:
                expected = InvalidRequest
            elif pool is None:
                expected = PoolNotFound
            elif int(address) in pool.addresses:
                assert block is not None
                repeats = pool_id.space == GLOBAL or block.label == label_of(GLOBAL, pool_id.ip_range)
                expected = None if repeats else Conflict
            result = self.attempt("explicit address", expected, lambda: allocator.request_address(pool_id, address))
            if result is not None:
                assert pool is not None and result.ip == address
                pool.addresses.add(int(address))

        @rule(data=st.data())
        def release_address(self, data: st.DataObject) -> None:
            host, scope, pool_id = self.pick(data)
            block = self.blocks.get(pool_id.subnet)
            pool = block.pools.get(scope) if block is not None else None
            subnet = pool_id.subnet
            if pool is not None and pool.addresses and data.draw(st.integers(0, 3)) > 0:
                value = data.draw(st.sampled_from(sorted(pool.addresses)))
            else:
                value = int(subnet.network_address) + data.draw(st.integers(0, min(subnet.num_addresses, 300)))
            target = address(subnet.version, value)
            first, last = usable(subnet, None)
            expected: type[IpamError] | None = None
            if not first <= value <= last:
                expected = InvalidRequest
            elif pool is None:
                expected = PoolNotFound
            elif value not in pool.addresses:
                expected = AddressNotFound
            allocator = self.allocators[host]
            self.attempt("release address", expected, lambda: allocator.release_address(pool_id, target))
            if expected is None:
                assert pool is not None
                pool.addresses.discard(value)
                pool.gateways.discard(value)
                then = data.draw(st.sampled_from(["reclaim", "serial", "nothing"]))
                if then == "reclaim":
                    # Capacity is back at once: the same address can be claimed again.
                    assert block is not None
                    self.claim_explicit(allocator, pool_id, pool, block, target)
                elif then == "serial":
                    # Round robin: a serial claim goes on after the last one, not back to the hole just made.
                    self.next_address(host, scope, pool_id, "serial")

        # -- what must hold after every step --------------------------------------

        @invariant()
        def the_store_is_the_model_and_sound(self) -> None:
            counts.steps += 1
            held = check_map(self.store)  # no overlaps, pools on blocks, no address twice, none reserved
            blocks = {(str(b.subnet), b.label, b.owner) for b in self.store.blocks()}
            assert blocks == {(str(s), b.label, b.owner) for s, b in self.blocks.items()}
            pools = {(str(p.subnet), p.scope, p.owner) for p in self.store.pools()}
            assert pools == {(str(s), scope, p.owner) for s, b in self.blocks.items() for scope, p in b.pools.items()}
            for subnet, block in self.blocks.items():
                for scope, pool in block.pools.items():
                    stored = held[(str(subnet), scope)]
                    assert stored == [str(address(subnet.version, a)) for a in sorted(pool.addresses)], (subnet, scope)
                    first, last = usable(subnet, None)
                    for value in pool.addresses:
                        assert first <= value <= last, f"{address(subnet.version, value)} is reserved in {subnet}"

        def teardown(self) -> None:
            try:
                for host, scope, pool_id in self.held_refs():
                    self.release_gateways(host, scope, pool_id)
                    self.allocators[host].release_pool(pool_id)
                assert self.store.blocks() == [] and self.store.pools() == []
                # Every release merged its buddies back: each parent is one free block again.
                for parent in (*PARENTS4, *PARENTS6):
                    request = PoolRequest(LOCAL, v6=parent.version == 6, subnet=parent)
                    assert self.allocators[HOSTS[0]].request_pool(request).subnet == parent
                for parent in (*PARENTS4, *PARENTS6):
                    self.allocators[HOSTS[0]].release_pool(PoolId(LOCAL, parent))
                wide = min(PARENTS4, key=lambda p: p.prefixlen)
                dynamic = self.allocators[HOSTS[1]].request_pool(PoolRequest(LOCAL, size=wide.prefixlen))
                assert dynamic.subnet == wide
            finally:
                self._cleanup()

    return AllocatorModel


# -- running it over every store -----------------------------------------------------

RUNS = {  # examples x steps: modest where every step is a network round trip (or a Lua interpreter)
    "memory": (60, 35),
    "file": (25, 25),
    "fakeredis": (12, 25),
    "redis": (25, 25),
}
_numbers = itertools.count()


def store_maker(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    server: RedisServer | None = request.getfixturevalue("redis_server") if kind == "redis" else None

    def make() -> tuple[Store, Callable[[], None]]:
        if kind == "memory":
            from stores.memory import MemoryStore

            memory = MemoryStore()
            return memory, memory.close
        if kind == "file":
            from stores.file import FileStore

            store = FileStore(tmp_path / f"example{next(_numbers)}" / "state.json")

            def close_and_reopen() -> None:
                store.close()
                FileStore(store.path).close()  # the journal still reads back

            return store, close_and_reopen
        from stores.redis import RedisStore

        if kind == "fakeredis":
            import fakeredis

            fake = RedisStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="model")
            return fake, fake.close
        assert server is not None
        prefix = f"model-{uuid.uuid4().hex[:12]}"
        from stores import from_url

        real = from_url(f"{server.url}?prefix={prefix}")

        def drop() -> None:
            client = server.client()
            try:
                keys = list(client.scan_iter(match="{" + prefix + "}:*"))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
                real.close()

        return real, drop

    return make


@pytest.mark.slow
@over_families("kind", RUNS)
def test_random_sequences_keep_the_store_equal_to_the_model(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = Counts()
    examples, steps = RUNS[kind]
    machine = machine_for(store_maker(kind, request, tmp_path), counts)
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    with capsys.disabled():
        print(
            f"\nstate machine[{kind}]: {counts.examples} examples, {counts.steps} checked steps, {counts.calls} calls"
        )
        for outcome, number in sorted(counts.outcomes.items()):
            print(f"  {outcome}: {number}")
    assert counts.steps >= examples * steps // 2
    # The sequences reached the outcomes that matter, not just refusals (all of them where the run is long).
    needed = ["dynamic pool: granted", "exact pool: granted", "release pool: granted", "next address: granted"]
    if kind == "memory":
        needed += ["dynamic pool: Exhausted", "exact pool: Conflict", "serial address: granted",
                   "explicit address: granted", "release address: granted", "gateway address: granted",
                   "gateway address: Conflict", "release pool: Conflict"]  # fmt: skip
    for outcome in needed:
        assert counts.outcomes[outcome] > 0, f"no step ended in {outcome!r}"


def test_an_ip_range_that_is_only_the_broadcast_address_never_hands_it_out(store: Store) -> None:
    """--subnet 10.0.0.0/24 --ip-range 10.0.0.255/32: the gateway must not be the broadcast address."""
    allocator = Allocator(store, replace(SETTINGS, host_id="h1"))
    subnet, ip_range = ipaddress.IPv4Network("10.0.0.0/24"), ipaddress.IPv4Network("10.0.0.255/32")
    try:
        pool_id = allocator.request_pool(PoolRequest(LOCAL, subnet=subnet, ip_range=ip_range)).pool_id
    except InvalidRequest as refused:  # refusing the network outright is fine too, if it changes nothing
        assert "holds no usable address" in str(refused)
        assert store.blocks() == []
        return
    try:
        granted = allocator.request_address(pool_id, gateway=True)
    except Exhausted:
        return  # refusing is fine: the range holds no usable address
    assert granted.ip not in (subnet.network_address, subnet.broadcast_address), f"handed out {granted}"
