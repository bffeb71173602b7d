"""Property tests: random mixes of sizes, explicit subnets and releases, checked against a brute-force oracle."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.errors import Conflict, Exhausted
from mini_ipam.pool_id import PoolId
from stores import Store
from stores.memory import MemoryStore

PARENT = ipaddress.IPv4Network("10.0.0.0/22")
AROUND = ipaddress.IPv4Network("10.0.0.0/20")  # explicit subnets land inside and outside the parent
Op = tuple[str, int, int]


def fake_redis_store() -> Store:
    from stores.redis import RedisStore

    return RedisStore(fakeredis.FakeRedis(server=fakeredis.FakeServer()), prefix="prop")


STORES: dict[str, Callable[[], Store]] = {"memory": MemoryStore, "fakeredis": fake_redis_store}

operations = st.lists(
    st.one_of(
        st.tuples(st.just("any"), st.integers(22, 30), st.just(0)),
        st.tuples(st.just("exact"), st.integers(21, 30), st.integers(0, 2**12 - 1)),
        st.tuples(st.just("release"), st.integers(0, 1000), st.just(0)),
    ),
    max_size=60,
)


def lowest_free(held: list[ipaddress.IPv4Network], size: int) -> ipaddress.IPv4Network | None:
    """The oracle: scan every aligned candidate of the parent."""
    for candidate in PARENT.subnets(new_prefix=size):
        if not any(candidate.overlaps(h) for h in held):
            return candidate
    return None


def check_sequence(store: Store, ops: list[Op]) -> None:
    allocator = Allocator(store, Settings(parents4=(PARENT,), host_id="h"))
    held: list[ipaddress.IPv4Network] = []
    for kind, size, where in ops:
        if kind == "release":
            if held:
                subnet = held.pop(size % len(held))
                allocator.release_pool(PoolId("local", subnet))
        elif kind == "any":
            expected = lowest_free(held, size)
            try:
                got = allocator.request_pool(PoolRequest(space="local", size=size)).subnet
            except Exhausted:
                assert expected is None
            else:
                assert got == expected
                assert isinstance(got, ipaddress.IPv4Network)
                held.append(got)
        else:
            step = 1 << (32 - size)
            subnet = ipaddress.IPv4Network((int(AROUND.network_address) + (where * step) % AROUND.num_addresses, size))
            overlapping = any(subnet.overlaps(h) for h in held)
            try:
                allocator.request_pool(PoolRequest(space="local", subnet=subnet))
            except Conflict:
                assert overlapping
            else:
                assert not overlapping
                held.append(subnet)
        blocks = sorted(block.subnet for block in store.blocks())
        assert blocks == sorted(held)
    for subnet in held:
        allocator.release_pool(PoolId("local", subnet))
    assert store.blocks() == []
    # Everything coalesced: the parent is one free block again.
    assert allocator.request_pool(PoolRequest(space="local", size=PARENT.prefixlen)).subnet == PARENT


@pytest.mark.parametrize("kind", list(STORES))
def test_random_mixes_never_overlap_and_coalesce(kind: str) -> None:
    @settings(max_examples=150 if kind == "memory" else 40, deadline=None)
    @given(ops=operations)
    def run(ops: list[Op]) -> None:
        store = STORES[kind]()
        try:
            check_sequence(store, ops)
        finally:
            store.close()

    run()
