"""The memory store's compact layout: int keys, bitmap or tree address claims, events as ints and as text."""

from __future__ import annotations

import ipaddress
import random

import pytest

from stores import ExactSubnet, Granted
from stores.journal import address_text, address_value, decode_event, encode_event, subnet_key, subnet_text
from stores.memory import BITMAP_BITS, MemoryStore, key_of, network_of
from stores.tree import BlockTree
from tests.helpers import addresses_of

net = ipaddress.ip_network
ip = ipaddress.ip_address


@pytest.mark.parametrize(
    "cidr",
    [
        "10.9.8.0/24",  # a bitmap
        f"10.8.0.0/{32 - BITMAP_BITS}",  # the largest bitmap
        f"10.8.0.0/{31 - BITMAP_BITS}",  # the smallest tree
        "fd00:1:2:3::/64",  # a tree
        "fd00:1:2:3::/120",  # an IPv6 bitmap
    ],
)
def test_address_claims_match_a_model_whatever_the_pool_size(cidr: str) -> None:
    subnet = net(cidr)
    store = MemoryStore()
    assert isinstance(store.open_pool(ExactSubnet(subnet), scope="s", label="l", owner="o"), Granted)
    base = int(subnet.network_address)
    window = min(subnet.num_addresses, 64)  # the claims stay among the first addresses, so the model is small
    first, last = base + 1, base + window - 2
    claimed: set[int] = set()
    cursor: int | None = None
    rng = random.Random(cidr)
    for _ in range(400):
        roll = rng.random()
        if roll < 0.4:
            serial = rng.random() < 0.5
            starts = [first]
            if serial and cursor is not None and first <= cursor < last:
                starts.insert(0, cursor + 1)
            expected = next((a for s in starts for a in range(s, last + 1) if a not in claimed), None)
            found = store.claim_next_address(subnet, "s", ip(first), ip(last), serial)
            assert found == (None if expected is None else ip(expected))
            if expected is not None:
                claimed.add(expected)
                cursor = expected if serial else cursor
        elif roll < 0.7:
            address = base + rng.randrange(window)
            assert store.claim_address(subnet, "s", ip(address)) == (address not in claimed)
            claimed.add(address)
        else:
            address = base + rng.randrange(window)
            assert store.release_address(subnet, "s", ip(address)) == (address in claimed)
            claimed.discard(address)
        assert addresses_of(store, subnet, "s") == [ip(a) for a in sorted(claimed)]


def test_a_range_past_the_end_of_a_pool_finds_nothing_there() -> None:
    store = MemoryStore()
    subnet = net("10.0.0.4/30")
    store.open_pool(ExactSubnet(subnet), scope="s", label="l", owner="o")
    assert store.claim_next_address(subnet, "s", ip("10.0.0.8"), ip("10.0.0.20"), False) is None
    assert store.claim_next_address(subnet, "s", ip("10.0.0.0"), ip("10.0.0.20"), False) == ip("10.0.0.4")


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "10.1.2.0/24", "10.1.2.3/32", "::/0", "fd00::/8", "::ffff:102:300/120"])
def test_block_keys_and_their_text_round_trip(cidr: str) -> None:
    subnet = net(cidr)
    key = key_of(subnet)
    assert network_of(key) == subnet
    assert subnet_text(key) == str(subnet)
    assert subnet_key(str(subnet)) == key


@pytest.mark.parametrize("text", ["10.1.2.1/24", "10.1.2.0/33", "10.1.2/24", "010.1.2.0/24", "10.1.2.0/２4", "x", ""])
def test_subnet_text_is_refused_as_ipaddress_refuses_it(text: str) -> None:
    with pytest.raises(ValueError):
        ipaddress.ip_network(text)
    with pytest.raises(ValueError):
        subnet_key(text)


@pytest.mark.parametrize(("version", "text"), [(4, "10.1.2.3"), (4, "0.0.0.0"), (6, "fd00::1"), (6, "::ffff:1.2.3.4")])
def test_address_text_round_trips(version: int, text: str) -> None:
    value = address_value(version, text)
    assert value == int(ip(text))
    assert address_text(version, value) == str(ip(text))


@pytest.mark.parametrize(("version", "text"), [(4, "10.1.2.256"), (4, "fd00::1"), (6, "10.1.2.3"), (4, "1.2.3")])
def test_address_text_of_the_wrong_kind_is_refused(version: int, text: str) -> None:
    with pytest.raises(ValueError):
        address_value(version, text)


def test_events_encode_to_the_journal_form_and_back() -> None:
    key = key_of(net("10.0.0.0/24"))
    event = {"op": "claim", "subnet": key, "scope": "s", "address": int(ip("10.0.0.7")), "since": 1.5, "note": "n"}
    encoded = encode_event(event)
    assert encoded == {"op": "claim", "subnet": "10.0.0.0/24", "scope": "s", "address": "10.0.0.7", "since": 1.5,
                       "note": "n"}  # fmt: skip
    assert list(encoded) == list(event)  # the same keys in the same order
    assert decode_event(encoded) == event
    setting = {"op": "set", "name": "pool6", "value": "fd00::/48"}
    assert encode_event(setting) == setting == decode_event(setting)


@pytest.mark.parametrize("data", [[], "open", {"op": "claim", "subnet": 5}, {"op": "claim", "subnet": "10.0.0.1/24"}])
def test_events_that_are_not_events_are_refused(data: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        decode_event(data)


def test_the_tree_finds_merges_and_reports_holders_by_heap_index() -> None:
    tree = BlockTree(32, 8, 10 << 24)
    assert tree.claim(int(ip("10.0.0.0")), 24) is None
    assert tree.claim(int(ip("10.0.1.0")), 25) is None
    assert tree.holder(int(ip("10.0.0.128")), 25) == (24, int(ip("10.0.0.0")))  # an ancestor
    assert tree.holder(int(ip("10.0.0.0")), 16) == (24, int(ip("10.0.0.0")))  # a descendant
    assert tree.find_first(10 << 24, 8, 24) == int(ip("10.0.2.0"))
    assert tree.find_first(10 << 24, 8, 25) == int(ip("10.0.1.128"))
    assert min(length for _, length in tree.free_blocks(10 << 24, 8)) == 9  # the largest free block
    assert list(tree.free_blocks(int(ip("10.0.0.0")), 23)) == [(int(ip("10.0.1.128")), 25)]
    assert tree.release(int(ip("10.0.0.0")), 24) and tree.release(int(ip("10.0.1.0")), 25)
    assert len(tree) == 0  # every freed buddy merged back
    assert list(tree.free_blocks(10 << 24, 8)) == [(10 << 24, 8)]
