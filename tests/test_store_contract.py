"""The Store contract, run over every store: memory, file, fakeredis and a real redis-server."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable

import pytest

from stores import AnySubnet, ExactSubnet, Granted, NoFreeSubnet, Overlap, Store, UnknownPool
from tests.helpers import addresses_of

net = ipaddress.ip_network
ip = ipaddress.ip_address


def open_exact(store: Store, cidr: str, scope: str = "s", label: str = "local", share: str | None = None):
    return store.open_pool(ExactSubnet(net(cidr)), scope=scope, label=label, owner="host-a", share_label=share)


def open_any(store: Store, parents: list[str], size: int, scope: str = "s"):
    return store.open_pool(AnySubnet(tuple(net(p) for p in parents), size), scope=scope, label="local", owner="host-a")


def granted_subnet(result) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    assert isinstance(result, Granted), result
    return result.pool.subnet


def test_exact_claim_records_block(store: Store) -> None:
    result = open_exact(store, "10.1.2.0/28", label="local")
    assert isinstance(result, Granted) and result.created
    assert result.pool.block.label == "local"
    assert result.pool.block.owner == "host-a"
    assert result.pool.scope == "s"
    assert [b.subnet for b in store.blocks()] == [net("10.1.2.0/28")]
    assert store.pool(net("10.1.2.0/28"), "s") == result.pool


@pytest.mark.parametrize(
    ("held", "wanted"),
    [
        ("10.1.2.0/28", "10.1.2.0/28"),  # identical
        ("10.1.2.0/28", "10.1.2.8/29"),  # inside
        ("10.1.2.0/28", "10.1.0.0/16"),  # around
        ("fd00::/64", "fd00::/48"),
        ("fd00::/64", "fd00:0:0:0:8000::/65"),
    ],
)
def test_overlap_is_refused_and_names_the_holder(store: Store, held: str, wanted: str) -> None:
    open_exact(store, held)
    result = open_exact(store, wanted, scope="other")
    assert isinstance(result, Overlap)
    assert result.holder.subnet == net(held)
    assert len(store.blocks()) == 1


def test_neighbours_do_not_overlap(store: Store) -> None:
    for cidr in ["10.1.2.0/28", "10.1.2.16/28", "10.1.2.32/27", "10.1.3.0/24", "10.1.0.0/24"]:
        assert isinstance(open_exact(store, cidr), Granted)
    assert len(store.blocks()) == 5


def test_dynamic_subnets_are_aligned_distinct_and_lowest_first(store: Store) -> None:
    got = [granted_subnet(open_any(store, ["10.0.0.0/24"], 28)) for _ in range(3)]
    assert got == [net("10.0.0.0/28"), net("10.0.0.16/28"), net("10.0.0.32/28")]


def test_mixed_sizes_never_overlap_and_exhaust_exactly(store: Store) -> None:
    subnets = [granted_subnet(open_any(store, ["10.0.0.0/24"], size)) for size in (28, 26, 27, 28, 25)]
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    used = sum(s.num_addresses for s in subnets)
    assert used == 16 + 64 + 32 + 16 + 128 == 256
    assert isinstance(open_any(store, ["10.0.0.0/24"], 30), NoFreeSubnet)


def test_dynamic_moves_to_the_next_parent_when_full(store: Store) -> None:
    parents = ["10.0.0.0/27", "10.9.0.0/27"]
    got = [granted_subnet(open_any(store, parents, 28)) for _ in range(4)]
    assert got == [net("10.0.0.0/28"), net("10.0.0.16/28"), net("10.9.0.0/28"), net("10.9.0.16/28")]
    assert isinstance(open_any(store, parents, 28), NoFreeSubnet)


def test_dynamic_skips_explicit_claims_inside_the_parent(store: Store) -> None:
    open_exact(store, "10.0.0.0/26")
    open_exact(store, "10.0.0.64/28", scope="t")
    assert granted_subnet(open_any(store, ["10.0.0.0/24"], 27)) == net("10.0.0.96/27")
    assert granted_subnet(open_any(store, ["10.0.0.0/24"], 28)) == net("10.0.0.80/28")


def test_parent_inside_a_claimed_block_has_no_room(store: Store) -> None:
    open_exact(store, "10.0.0.0/8")
    assert isinstance(open_any(store, ["10.1.0.0/16"], 28), NoFreeSubnet)


def test_releasing_everything_merges_the_parent_back(store: Store) -> None:
    subnets = [granted_subnet(open_any(store, ["10.0.0.0/24"], size)) for size in (28, 27, 28, 26, 30, 26)]
    for subnet in subnets:
        closed = store.close_pool(subnet, "s")
        assert closed is not None and closed.freed
    assert store.blocks() == []
    assert granted_subnet(open_any(store, ["10.0.0.0/24"], 24)) == net("10.0.0.0/24")


def test_ipv6_dynamic(store: Store) -> None:
    first = granted_subnet(open_any(store, ["fd12:3456:789a::/48"], 64))
    second = granted_subnet(open_any(store, ["fd12:3456:789a::/48"], 64))
    assert (first, second) == (net("fd12:3456:789a::/64"), net("fd12:3456:789a:1::/64"))


def test_families_are_separate_maps(store: Store) -> None:
    assert isinstance(open_exact(store, "0.0.0.0/0"), Granted)
    assert isinstance(open_exact(store, "::/0", scope="t"), Granted)


def test_share_label_lets_an_exact_copy_join(store: Store) -> None:
    open_exact(store, "10.5.0.0/24", scope="global", label="global")
    copy = open_exact(store, "10.5.0.0/24", scope="local@b", label="local", share="global")
    assert isinstance(copy, Granted) and copy.created
    assert copy.pool.block.label == "global"
    again = open_exact(store, "10.5.0.0/24", scope="local@b", label="local", share="global")
    assert isinstance(again, Granted) and not again.created
    assert len(store.blocks()) == 1 and len(store.pools()) == 2


def test_share_label_does_not_share_a_different_label_or_subnet(store: Store) -> None:
    open_exact(store, "10.5.0.0/24", scope="local@a", label="local")
    assert isinstance(open_exact(store, "10.5.0.0/24", scope="local@b", share="global"), Overlap)
    open_exact(store, "10.6.0.0/24", scope="global", label="global")
    assert isinstance(open_exact(store, "10.6.0.0/25", scope="local@b", share="global"), Overlap)


def test_block_lives_until_its_last_pool_closes(store: Store) -> None:
    subnet = net("10.5.0.0/24")
    open_exact(store, str(subnet), scope="global", label="global")
    open_exact(store, str(subnet), scope="local@b", share="global")
    first = store.close_pool(subnet, "global")
    assert first is not None and not first.freed
    assert isinstance(open_exact(store, "10.5.0.0/25", scope="x"), Overlap)
    last = store.close_pool(subnet, "local@b")
    assert last is not None and last.freed
    assert store.blocks() == [] and store.pools() == []
    assert store.close_pool(subnet, "local@b") is None


def test_addresses_lowest_free_and_release(store: Store) -> None:
    subnet = net("10.1.2.0/29")
    open_exact(store, str(subnet))
    first, last = ip("10.1.2.1"), ip("10.1.2.6")
    assert store.claim_address(subnet, "s", ip("10.1.2.1"))
    assert not store.claim_address(subnet, "s", ip("10.1.2.1"))
    got = [store.claim_next_address(subnet, "s", first, last, False) for _ in range(5)]
    assert got == [ip(f"10.1.2.{i}") for i in range(2, 7)]
    assert store.claim_next_address(subnet, "s", first, last, False) is None
    assert store.release_address(subnet, "s", ip("10.1.2.4"))
    assert not store.release_address(subnet, "s", ip("10.1.2.4"))
    assert store.claim_next_address(subnet, "s", first, last, False) == ip("10.1.2.4")
    assert addresses_of(store, subnet, "s") == [ip(f"10.1.2.{i}") for i in range(1, 7)]


def test_serial_addresses_do_not_reuse_at_once(store: Store) -> None:
    subnet = net("10.1.2.0/29")
    open_exact(store, str(subnet))
    first, last = ip("10.1.2.1"), ip("10.1.2.6")
    a = store.claim_next_address(subnet, "s", first, last, True)
    b = store.claim_next_address(subnet, "s", first, last, True)
    assert (a, b) == (ip("10.1.2.1"), ip("10.1.2.2"))
    assert store.release_address(subnet, "s", ip("10.1.2.1"))
    assert store.claim_next_address(subnet, "s", first, last, True) == ip("10.1.2.3")
    rest = [store.claim_next_address(subnet, "s", first, last, True) for _ in range(3)]
    assert rest == [ip("10.1.2.4"), ip("10.1.2.5"), ip("10.1.2.6")]
    # Wraps around to the freed one, and then the range is full.
    assert store.claim_next_address(subnet, "s", first, last, True) == ip("10.1.2.1")
    assert store.claim_next_address(subnet, "s", first, last, True) is None


def test_addresses_are_per_pool(store: Store) -> None:
    subnet = net("10.5.0.0/24")
    open_exact(store, str(subnet), scope="global", label="global")
    open_exact(store, str(subnet), scope="local@b", share="global")
    assert store.claim_address(subnet, "global", ip("10.5.0.7"))
    assert store.claim_address(subnet, "local@b", ip("10.5.0.7"))
    store.close_pool(subnet, "global")
    assert addresses_of(store, subnet, "local@b") == [ip("10.5.0.7")]


def test_ipv6_addresses(store: Store) -> None:
    subnet = net("fd00:1::/64")
    open_exact(store, str(subnet))
    first, last = ip("fd00:1::1"), ip("fd00:1::ffff:ffff:ffff:ffff")
    assert store.claim_next_address(subnet, "s", first, last, False) == ip("fd00:1::1")
    assert store.claim_address(subnet, "s", ip("fd00:1::abcd"))
    assert addresses_of(store, subnet, "s") == [ip("fd00:1::1"), ip("fd00:1::abcd")]


def test_unknown_pool_raises_for_address_operations(store: Store) -> None:
    subnet = net("10.9.9.0/24")
    with pytest.raises(UnknownPool):
        store.claim_address(subnet, "s", ip("10.9.9.9"))
    with pytest.raises(UnknownPool):
        store.claim_next_address(subnet, "s", ip("10.9.9.1"), ip("10.9.9.254"), False)
    with pytest.raises(UnknownPool):
        store.release_address(subnet, "s", ip("10.9.9.9"))
    with pytest.raises(UnknownPool):
        addresses_of(store, subnet, "s")
    assert store.pool(subnet, "s") is None


def test_closing_a_pool_drops_its_addresses(store: Store) -> None:
    subnet = net("10.1.2.0/28")
    open_exact(store, str(subnet))
    store.claim_address(subnet, "s", ip("10.1.2.5"))
    store.close_pool(subnet, "s")
    open_exact(store, str(subnet))
    assert addresses_of(store, subnet, "s") == []


def test_setting_is_stored_once(store: Store) -> None:
    assert store.make_setting("pool6", "fd01::/48") == "fd01::/48"
    assert store.make_setting("pool6", "fd02::/48") == "fd01::/48"


@pytest.mark.store_kinds("file", "fakeredis", "redis")
def test_state_survives_reopening(store_factory: Callable[[], Store]) -> None:
    first = store_factory()
    subnet = granted_subnet(open_any(first, ["10.0.0.0/24"], 28))
    first.claim_address(subnet, "s", ip("10.0.0.1"))
    first.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.14"), True)
    first.make_setting("pool6", "fd01::/48")
    first.close()
    second = store_factory()
    assert [b.subnet for b in second.blocks()] == [subnet]
    assert addresses_of(second, subnet, "s") == [ip("10.0.0.1"), ip("10.0.0.2")]
    assert second.claim_next_address(subnet, "s", ip("10.0.0.1"), ip("10.0.0.14"), True) == ip("10.0.0.3")
    assert second.make_setting("pool6", "other") == "fd01::/48"
    assert granted_subnet(open_any(second, ["10.0.0.0/24"], 28)) == net("10.0.0.16/28")


RACERS = 40


def race(store_factory: Callable[[], Store], work: Callable[[Store], object]) -> list[object]:
    """Run ``work`` in RACERS threads at once, each with its own store handle."""
    handles = [store_factory() for _ in range(RACERS)]
    barrier = threading.Barrier(RACERS)
    results: list[object] = [None] * RACERS

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(handles[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_racers_for_one_slash_28_get_exactly_13_distinct_addresses(store_factory: Callable[[], Store]) -> None:
    setup = store_factory()
    subnet = net("10.7.0.0/28")
    open_exact(setup, str(subnet))
    assert setup.claim_address(subnet, "s", ip("10.7.0.1"))  # the gateway
    results = race(store_factory, lambda s: s.claim_next_address(subnet, "s", ip("10.7.0.1"), ip("10.7.0.14"), False))
    won = [r for r in results if r is not None]
    assert len(won) == 13
    assert len(set(won)) == 13
    assert sorted(addresses_of(setup, subnet, "s")) == [ip(f"10.7.0.{i}") for i in range(1, 15)]


def test_racers_for_overlapping_subnets_of_different_sizes_one_wins(store_factory: Callable[[], Store]) -> None:
    sizes = [24 + (i % 6) for i in range(RACERS)]  # /24 .. /29, all starting at 10.8.0.0

    def claim(i_store: Store) -> object:
        size = sizes.pop()
        return open_exact(i_store, f"10.8.0.0/{size}", scope=f"s{size}")

    results = race(store_factory, claim)
    assert sum(isinstance(r, Granted) for r in results) == 1
    assert len(store_factory().blocks()) == 1


def test_racers_for_dynamic_subnets_never_collide(store_factory: Callable[[], Store]) -> None:
    results = race(store_factory, lambda s: open_any(s, ["10.9.0.0/22"], 28))
    subnets = [granted_subnet(r) for r in results]
    assert len(set(subnets)) == RACERS
    assert sorted(subnets) == [net(f"10.9.{i // 16}.{(i % 16) * 16}/28") for i in range(RACERS)]


def test_address_claims_carry_time_and_note(store: Store) -> None:
    subnet = net("10.1.2.0/29")
    open_exact(store, str(subnet))
    before = time.time()
    assert store.claim_address(subnet, "s", ip("10.1.2.1"), note="gateway")
    assert store.claim_next_address(subnet, "s", ip("10.1.2.1"), ip("10.1.2.6"), False) == ip("10.1.2.2")
    claims = store.address_claims(subnet, "s")
    assert [(c.address, c.note) for c in claims] == [(ip("10.1.2.1"), "gateway"), (ip("10.1.2.2"), "")]
    assert all(before - 1 <= c.since <= time.time() + 1 for c in claims)


def test_ping_answers(store: Store) -> None:
    store.ping()
