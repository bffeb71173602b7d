"""The shared map's identity: a map that forgot is found out in the same atomic step as a claim,
and rebuilt from the members' records before anything new is handed out.

Runs on fakeredis and on a real redis-server; the multi-process campaign over real
faults is ``tests/hardening/test_map_loss.py``.
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from stores import (
    AddressClaim,
    AnySubnet,
    Block,
    ExactSubnet,
    Granted,
    MapLost,
    MapRecovering,
    Overlap,
    PoolInfo,
    StoreUnavailable,
)
from stores.record import Record
from stores.recovery import MEMBERS, RecoveringStore
from stores.redis import RedisStore
from tests.helpers import addresses_of
from tests.servers import RedisServer

net = ipaddress.ip_network
ip = ipaddress.ip_address
PARENT = net("10.0.0.0/24")
_prefixes = itertools.count()

Maker = Callable[..., RedisStore]


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def shared(request: pytest.FixtureRequest) -> Iterator[tuple[Maker, Any]]:
    """A factory of RedisStores on one map (one server, one prefix), and a raw client of that server."""
    prefix = f"identity{next(_prefixes)}"
    made: list[RedisStore] = []
    if request.param == "fakeredis":
        server = fakeredis.FakeServer()

        def make(**options: Any) -> RedisStore:
            return RedisStore(fakeredis.FakeRedis(server=server), prefix, **options)

        client: Any = fakeredis.FakeRedis(server=server)
    else:
        real: RedisServer = request.getfixturevalue("redis_server")

        def make(**options: Any) -> RedisStore:
            return RedisStore.from_url(f"{real.url}?prefix={prefix}", **options)

        client = real.client()

    def tracked(**options: Any) -> RedisStore:
        store = make(**options)
        made.append(store)
        return store

    yield tracked, client
    for store in made:
        store.close()
    for key in client.scan_iter(match="{" + prefix + "}:*"):
        client.delete(key)


def open_any(store: Any, scope: str = "local@a", owner: str = "a", size: int = 28) -> Granted:
    result = store.open_pool(AnySubnet((PARENT,), size), scope=scope, label="local", owner=owner)
    assert isinstance(result, Granted), result
    return result


def keys_of(client: Any, store: RedisStore) -> set[str]:
    return {k.decode() for k in client.scan_iter(match="{" + store.prefix + "}:*")}


# -- found out in the same step as the claim ------------------------------------------


def test_a_flushed_map_refuses_every_claim_and_writes_nothing(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    store = make(member="a")
    held = open_any(store).pool.subnet
    client.flushall()
    with pytest.raises(MapLost, match="no identity any more") as lost:
        open_any(store)  # it would get ``held`` again
    assert lost.value.why == "absent"
    for claim in (
        lambda: store.claim_address(held, "local@a", ip("10.0.0.1")),
        lambda: store.claim_next_address(held, "local@a", ip("10.0.0.1"), ip("10.0.0.14"), False),
        lambda: store.open_pool(ExactSubnet(held), scope="local@a", label="local", owner="a"),
        lambda: store.make_setting("pool6", "fd00::/48"),
    ):
        with pytest.raises(MapLost):
            claim()
    assert keys_of(client, store) == set()


def test_a_map_of_another_identity_is_lost_too(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    first, second = make(member="a"), make(member="b")
    open_any(first)
    open_any(second)
    status, made = second.recover(second.identity)  # nothing was lost: it joins
    assert not made and status.identity is not None and status.identity.id == first.identity.id  # type: ignore[union-attr]
    client.delete("{" + first.prefix + "}:map")
    status, made = second.recover(None)  # a member that finds no identity makes a new map
    assert made and status.identity is not None
    with pytest.raises(MapLost, match="another map now") as lost:
        open_any(first)
    assert lost.value.why == "replaced" and lost.value.found == status.identity


def test_a_map_back_at_an_older_generation_is_lost(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    store, stale = make(member="a"), make(member="b")
    open_any(stale)  # b last saw the map here
    key = "{" + store.prefix + "}:map"
    snapshot = client.dump(key)
    for _ in range(3):
        open_any(store)
    assert store.identity is not None and stale.identity is not None and store.identity.gen > stale.identity.gen
    client.restore(key, 0, snapshot, replace=True)  # as if the server came back from an older copy
    open_any(stale)  # b cannot tell by itself (its own changes are all there): see the settle window
    for _ in range(4):
        open_any(stale)  # and its changes take the map's generation past what a saw
    assert stale.identity is not None and stale.identity.gen > store.identity.gen
    with pytest.raises(MapLost, match="older generation than this driver saw") as lost:
        open_any(store)  # a's own last change is not in the map: that cannot be hidden
    assert lost.value.why == "behind"
    status, made = store.recover(store.identity)  # the member that saw further replaces the map
    assert made and status.identity is not None
    with pytest.raises(MapLost, match="another map now"):
        open_any(stale)


def test_the_generation_counts_changes_only(shared: tuple[Maker, Any]) -> None:
    make, _ = shared
    store = make(member="a")
    store.setting("nothing")  # attaches
    assert store.identity is not None
    start = store.identity.gen
    pool = open_any(store).pool.subnet
    store.pool(pool, "local@a")
    store.address_claims(pool, "local@a")
    assert not store.release_address(pool, "local@a", ip("10.0.0.3"))  # nothing to release
    assert store.identity.gen == start + 1
    assert store.claim_address(pool, "local@a", ip("10.0.0.3"))
    assert not store.claim_address(pool, "local@a", ip("10.0.0.3"))
    assert store.identity.gen == start + 2


def test_a_reader_never_writes_not_even_a_map(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    reader = make(read_only=True)
    assert reader.setting("pool6") is None
    assert reader.pools() == [] and reader.blocks() == []
    assert keys_of(client, reader) == set()
    writer = make(member="a")
    assert writer.make_setting("pool6", "fd00:1::/48") == "fd00:1::/48"
    assert reader.setting("pool6") == "fd00:1::/48"
    with pytest.raises(Exception, match="read-only"):
        open_any(reader)


def test_the_replies_that_arrived_take_their_undo_records_along(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    store = make(member="a")
    pools = [open_any(store).pool.subnet for _ in range(12)]
    for subnet in pools:
        store.claim_next_address(subnet, "local@a", ip("10.0.0.1"), ip("10.0.0.254"), False)
    requests = list(client.scan_iter(match="{" + store.prefix + "}:req:*"))
    assert len(requests) == 1  # 24 claims: each next call confirmed the one before


# -- a recovering map ---------------------------------------------------------------


def test_a_new_map_hands_out_no_block_until_its_window_has_passed(shared: tuple[Maker, Any]) -> None:
    make, _ = shared
    store = make(member="a", recovery_window=0.6)
    status, made = store.recover(None, window=0.6)
    assert made and status.recovering_until is not None
    store.adopt(status.identity)
    with pytest.raises(MapRecovering, match="new or being rebuilt") as recovering:
        open_any(store)
    assert recovering.value.until == pytest.approx(status.recovering_until, abs=0.01)
    deadline = time.monotonic() + 5
    while True:
        try:
            open_any(store)
            break
        except MapRecovering:
            assert time.monotonic() < deadline, "the window never ended"
            time.sleep(0.05)


def test_a_rebuilt_map_is_ready_once_every_expected_member_has_re_asserted(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    a, b = make(member="a"), make(member="b")
    pool_a, pool_b = open_any(a, "local@a", "a").pool, open_any(b, "local@b", "b").pool
    assert a.claim_address(pool_a.subnet, "local@a", ip(str(pool_a.subnet[1])))
    client.delete("{" + a.prefix + "}:map")  # the identity is gone, the claims are still there
    status, made = a.recover(None, window=60, expect=["a", "b"])  # as after a loss: a new, recovering map
    new = status.identity
    assert made and new is not None
    claim = AddressClaim(ip(str(pool_a.subnet[1])), 1.0, "gateway")
    assert a.restore(pool_a, [claim], new) == 0  # its block survived: only re-asserted
    assert a.restored(new) is not None  # b has not re-asserted yet: still recovering
    a.adopt(new)
    with pytest.raises(MapRecovering):
        open_any(a)
    # b's own pool takes addresses meanwhile (b owns it); a's does not hand out b's next address.
    b.adopt(new)
    assert b.claim_next_address(pool_b.subnet, "local@b", ip("10.0.0.1"), ip("10.0.0.254"), False) is not None
    with pytest.raises(MapRecovering):
        a.claim_next_address(pool_b.subnet, "local@b", ip("10.0.0.1"), ip("10.0.0.254"), False)
    assert b.restore(pool_b, [], new) == 0
    assert b.restored(new) is None  # the last expected member: ready at once, not in 60 s
    assert open_any(a).pool.subnet not in (pool_a.subnet, pool_b.subnet)


def test_restore_refuses_what_overlaps_another_members_claim(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    a, b = make(member="a"), make(member="b")
    mine = open_any(a).pool
    client.delete(*client.keys("{" + a.prefix + "}:*"))  # the map forgets everything
    status, _ = b.recover(None, window=0)
    b.adopt(status.identity)
    theirs = open_any(b, "local@b", "b").pool  # b was handed the same subnet: the map knew no better
    assert theirs.subnet == mine.subnet
    result = a.restore(mine, [], status.identity)  # type: ignore[arg-type]
    assert isinstance(result, Overlap) and result.holder.owner == "b"


def test_a_copy_re_joins_the_shared_block_of_another_owner(shared: tuple[Maker, Any]) -> None:
    make, client = shared
    leader, node = make(member="leader"), make(member="node")
    subnet = net("10.5.0.0/24")
    leader.open_pool(ExactSubnet(subnet), scope="global", label="global", owner="leader")
    copy = node.open_pool(ExactSubnet(subnet), scope="local@node", label="local", owner="node", share_label="global")
    assert isinstance(copy, Granted) and copy.pool.block.owner == "leader"
    client.delete(*client.keys("{" + leader.prefix + "}:*"))
    status, _ = leader.recover(None, window=0)
    new = status.identity
    assert new is not None
    # A new leader re-claimed the overlay's subnet after the loss: the copy still joins it.
    leader.adopt(new)
    leader.open_pool(ExactSubnet(subnet), scope="global", label="global", owner="leader2")
    assert node.restore(copy.pool, [], new) == 0
    # A local network on a block of another owner is not a copy: it is refused.
    local = leader.open_pool(ExactSubnet(net("10.6.0.0/24")), scope="local@leader", label="local", owner="leader")
    assert isinstance(local, Granted)
    impostor = PoolInfo(Block(net("10.6.0.0/24"), "local", "node", 1.0), "local@node", "node", 1.0)
    assert isinstance(node.restore(impostor, [], new), Overlap)


# -- a member's record and its rebuild --------------------------------------------


@pytest.fixture
def members(shared: tuple[Maker, Any], tmp_path: Path) -> Iterator[Callable[..., RecoveringStore]]:
    made: list[RecoveringStore] = []
    make, _ = shared
    setup = make(member="setup")
    setup.attach()  # the map exists: members join it (a map they made would recover for their window)

    def member(name: str, window: float = 30.0) -> RecoveringStore:
        store = RecoveringStore(make(member=name), Record(tmp_path / f"{name}.json"), window=window, map_name="m")
        store.start()
        made.append(store)
        return store

    yield member
    for store in made:
        store.close()


def wait_rebuilt(store: RecoveringStore, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while store.state.lost is not None or store.state.rebuilt_total == 0:
        assert time.monotonic() < deadline, f"no rebuild: {store.state}"
        time.sleep(0.02)


def test_a_member_re_asserts_its_record_and_nothing_it_held_is_handed_out_again(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any]
) -> None:
    _, client = shared
    a = members("a", window=0)
    held = [open_any(a).pool.subnet for _ in range(3)]
    gateway = ip(str(held[0][1]))
    assert a.claim_address(held[0], "local@a", gateway, "gateway")
    container = a.claim_next_address(held[0], "local@a", ip(str(held[0][2])), ip(str(held[0][14])), False)
    ula = a.make_setting("pool6", "fd12:3456:789a::/48")
    client.flushall()
    with pytest.raises(MapLost):
        open_any(a)
    wait_rebuilt(a)
    assert a.state.lost_total == 1 and a.state.conflicts == []
    assert "re-asserted 3 pools and 2 addresses" in a.state.last_rebuild
    assert {pool.subnet for pool in a.pools()} == set(held)
    assert addresses_of(a, held[0], "local@a") == [gateway, container]
    assert a.setting("pool6") == ula  # the IPv6 parent did not change
    fresh = open_any(a).pool.subnet
    assert fresh not in held
    assert addresses_of(a, held[0], "local@a") == [gateway, container]


def test_two_members_rebuild_together_and_the_map_is_ready_when_both_have_re_asserted(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any]
) -> None:
    _, client = shared
    a, b = members("a", window=60), members("b", window=60)
    for store in (a, b):  # the heartbeat: leases renewed, the members alive noted in each record
        lease = store.shared.lease(store.shared.member, {"instance": store.shared.member}, 30)
        assert lease is not None
        lease.renew()
    a.check()
    b.check()
    assert a.record is not None and set((a.record.setting(MEMBERS) or "").split()) == {"a", "b"}
    mine = [open_any(a, "local@a", "a").pool.subnet for _ in range(2)]
    theirs = [open_any(b, "local@b", "b").pool.subnet for _ in range(2)]
    client.flushall()
    a.check()  # an idle member finds the loss at its next look
    wait_rebuilt(a)
    assert a.state.recovering_until is not None  # b has not re-asserted yet
    with pytest.raises(Exception, match="new or being rebuilt"):
        open_any(a, "local@a", "a")
    b.check()
    wait_rebuilt(b)
    fresh = open_any(a, "local@a", "a").pool.subnet  # ready long before the 60 s window
    assert fresh not in mine + theirs


def test_a_conflicting_re_assertion_is_reported_not_forced(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any]
) -> None:
    _, client = shared
    a = members("a", window=0)
    mine = open_any(a, "local@a", "a").pool.subnet
    a.close()  # a's driver is down for longer than the recovery window
    client.flushall()
    b = members("b", window=0)  # a fresh member: it makes a new map
    theirs = open_any(b, "local@b", "b").pool.subnet
    assert theirs == mine  # the map could not know
    back = members("a", window=0)  # a comes back: its record belongs to a lost map
    wait_rebuilt(back)
    assert len(back.state.conflicts) == 1 and str(mine) in back.state.conflicts[0]
    assert back.state.conflicts_total == 1
    assert [pool.owner for pool in back.pools() if pool.subnet == mine] == ["b"]  # not forced


def test_releases_of_what_the_lost_map_forgot_succeed(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any]
) -> None:
    _, client = shared
    a = members("a", window=30)
    pool = open_any(a).pool.subnet
    address = ip(str(pool[1]))
    assert a.claim_address(pool, "local@a", address)
    client.flushall()
    # The user removes the network while the map is lost: its release must not fail.
    assert a.release_address(pool, "local@a", address)
    closed = a.close_pool(pool, "local@a")
    assert closed is not None and closed.pool.subnet == pool
    wait_rebuilt(a)
    assert a.pools() == []  # nothing re-asserted of what was released meanwhile


def test_a_server_change_settles_new_subnets_for_one_window(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any]
) -> None:
    a = members("a", window=0.5)
    pool = open_any(a).pool.subnet
    # The server as a connection would find it after a restart: another run id, then the real one
    # (so later connections, which find the real one, see no further change).
    actual = a.shared.watch.run_id or "after"
    a.shared.watch.seen("before")
    a.shared.watch.seen(actual)  # a connection found another server behind the address
    with pytest.raises(StoreUnavailable, match="server changed"):
        open_any(a)
    assert a.claim_next_address(pool, "local@a", ip(str(pool[1])), ip(str(pool[14])), False) is not None
    deadline = time.monotonic() + 5
    while True:
        try:
            open_any(a)
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_record_is_never_re_asserted_into_another_map(tmp_path: Path, shared: tuple[Maker, Any]) -> None:
    make, _ = shared
    record = Record(tmp_path / "r.json")
    RecoveringStore(make(member="a"), record, window=0, map_name="redis one").close()
    with pytest.raises(Exception, match="belongs to the map redis one"):
        RecoveringStore(make(member="a"), Record(tmp_path / "r.json"), window=0, map_name="redis two")


def test_the_health_check_is_503_with_the_reason_while_the_map_is_lost(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mini_ipam.allocator import Allocator, Settings
    from mini_ipam.operations import Operations

    _, client = shared
    a = members("a", window=0)
    operations = Operations(Allocator(a, Settings(parents4=(PARENT,), host_id="a")), shared=a)
    assert operations.health()[0] == 200
    release = threading.Event()
    rebuild = a._rebuild_now
    monkeypatch.setattr(a, "_rebuild_now", lambda *args: (release.wait(10), rebuild(*args)))
    open_any(a)
    client.flushall()
    with pytest.raises(MapLost):
        open_any(a)
    status, body = operations.health()
    assert status == 503 and body["status"] == "unavailable" and body["map"]["state"] == "lost"
    assert "no identity any more" in body["error"] and "rebuilding it from its record" in body["error"]
    release.set()
    wait_rebuilt(a)
    status, body = operations.health()
    assert status == 200 and body["map"]["state"] == "ready" and body["map"]["lost_total"] == 1


def test_a_member_that_lost_its_record_keeps_what_the_map_holds_for_it_and_records_it(
    members: Callable[..., RecoveringStore], shared: tuple[Maker, Any], tmp_path: Path
) -> None:
    _, client = shared
    a = members("a", window=0)
    held = open_any(a).pool.subnet
    address = a.claim_next_address(held, "local@a", ip(str(held[1])), ip(str(held[14])), False)
    assert address is not None
    a.close()
    for path in tmp_path.glob("a.json*"):
        path.unlink()  # the record is gone (deleted, moved, or an upgrade from a version that kept none)
    again = members("a", window=0)
    assert [p.subnet for p in again.pools() if p.owner == "a"] == [held]  # nothing dropped
    assert isinstance(again.open_pool(ExactSubnet(held), scope="local@b", label="local", owner="b"), Overlap)
    assert [p.subnet for p, _ in again.record.holdings()] == [held]  # the record learnt it
    client.flushall()
    with pytest.raises(MapLost):
        open_any(again)
    wait_rebuilt(again)
    assert [c.address for c in again.address_claims(held, "local@a")] == [address]  # re-asserted from it
