"""Allocator semantics, over every store: sizes, spaces, copies, gateways, ranges, addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest

from mini_ipam.allocator import Allocator, PoolRequest, Settings
from mini_ipam.errors import AddressNotFound, Conflict, Exhausted, InvalidRequest, PoolNotFound
from mini_ipam.pool_id import PoolId
from stores import Store
from tests.helpers import addresses_of

net = ipaddress.ip_network
ip = ipaddress.ip_address


def settings(host: str = "host-a", **overrides: object) -> Settings:
    values: dict[str, object] = {
        "parents4": (net("10.20.0.0/22"), net("10.30.0.0/24")),
        "parents6": (net("fd00:20::/48"),),
        "host_id": host,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def allocator(store: Store) -> Allocator:
    return Allocator(store, settings())


def local(subnet: str | None = None, ip_range: str | None = None, size: int | None = None) -> PoolRequest:
    return PoolRequest(
        space="local",
        subnet=net(subnet) if subnet else None,
        ip_range=net(ip_range) if ip_range else None,
        size=size,
    )


def glob(subnet: str | None = None, ip_range: str | None = None) -> PoolRequest:
    return PoolRequest(
        space="global", subnet=net(subnet) if subnet else None, ip_range=net(ip_range) if ip_range else None
    )


def test_default_size_from_the_first_parent(allocator: Allocator) -> None:
    pool = allocator.request_pool(local())
    assert (str(pool.pool_id), pool.subnet) == ("local/10.20.0.0/28", net("10.20.0.0/28"))


def test_sizes_outside_the_range_name_it(allocator: Allocator) -> None:
    with pytest.raises(
        InvalidRequest, match=r"IPv4 sizes range from /22 to /30 \(parents: 10.20.0.0/22, 10.30.0.0/24\)"
    ):
        allocator.request_pool(local(size=21))
    with pytest.raises(InvalidRequest, match="/31"):
        allocator.request_pool(local(size=31))


def test_a_size_only_the_first_parent_holds_skips_the_second(allocator: Allocator) -> None:
    assert allocator.request_pool(local(size=23)).subnet == net("10.20.0.0/23")
    assert allocator.request_pool(local(size=23)).subnet == net("10.20.2.0/23")
    with pytest.raises(Exhausted, match=r"no free /23 left in 10.20.0.0/22, 10.30.0.0/24"):
        allocator.request_pool(local(size=23))
    assert allocator.request_pool(local(size=24)).subnet == net("10.30.0.0/24")


def test_explicit_subnets_outside_the_parents(allocator: Allocator) -> None:
    assert allocator.request_pool(local("192.168.50.0/24")).subnet == net("192.168.50.0/24")
    with pytest.raises(Conflict, match="held in address space local by host host-a"):
        allocator.request_pool(local("192.168.50.0/25"))


def test_local_is_strict_even_for_an_exact_duplicate(allocator: Allocator) -> None:
    allocator.request_pool(local("10.20.0.0/24"))
    with pytest.raises(Conflict):
        allocator.request_pool(local("10.20.0.0/24"))


def test_local_and_global_share_one_map(allocator: Allocator) -> None:
    allocator.request_pool(glob("10.20.0.0/24"))
    assert allocator.request_pool(local()).subnet == net("10.20.1.0/28")
    with pytest.raises(Conflict):
        allocator.request_pool(local("10.20.0.0/25"))


def test_global_re_requests_return_the_existing_pool(store_factory: Callable[[], Store]) -> None:
    first = Allocator(store_factory(), settings("manager-1"))
    pool = first.request_pool(glob())
    gateway = first.request_address(pool.pool_id, gateway=True)
    task = first.request_address(pool.pool_id)
    # A new leader on another host replays everything explicitly.
    leader = Allocator(store_factory(), settings("manager-2"))
    again = leader.request_pool(glob(str(pool.subnet)))
    assert again == pool
    assert leader.request_address(pool.pool_id, gateway.ip, gateway=True) == gateway
    assert leader.request_address(pool.pool_id, task.ip) == task
    assert leader.request_address(pool.pool_id) == ipaddress.ip_interface(f"{task.ip + 1}/{pool.subnet.prefixlen}")
    with pytest.raises(Conflict):
        leader.request_pool(glob(str(pool.subnet.supernet())))


def test_node_local_copies_of_a_global_network(store_factory: Callable[[], Store]) -> None:
    manager = Allocator(store_factory(), settings("manager"))
    worker = Allocator(store_factory(), settings("worker"))
    pool = manager.request_pool(glob("10.40.0.0/24"))
    manager.request_address(pool.pool_id, ip("10.40.0.1"), gateway=True)
    manager.request_address(pool.pool_id, ip("10.40.0.5"))
    for node in (manager, worker):  # every node that runs a task makes its own local copy
        copy = node.request_pool(local("10.40.0.0/24"))
        assert str(copy.pool_id) == "local/10.40.0.0/24"
        node.request_address(copy.pool_id, ip("10.40.0.1"), gateway=True)
        node.request_address(copy.pool_id, ip("10.40.0.5"))
        # A node re-sends its copy and addresses after its engine restarts.
        assert node.request_pool(local("10.40.0.0/24")) == copy
        assert str(node.request_address(copy.pool_id, ip("10.40.0.5"))) == "10.40.0.5/24"
    # A plain local network can still never take that subnet.
    with pytest.raises(Conflict):
        worker.request_pool(local("10.40.0.0/25"))
    # The manager deallocates the global network first (gateway, then pool); the copies keep the subnet claimed.
    manager.release_address(pool.pool_id, ip("10.40.0.1"))
    manager.release_pool(pool.pool_id)
    with pytest.raises(Conflict):
        worker.request_pool(local("10.40.0.128/25"))
    for node in (worker, manager):
        node.release_address(PoolId.parse("local/10.40.0.0/24"), ip("10.40.0.1"))
        node.release_pool(PoolId.parse("local/10.40.0.0/24"))
    assert manager.request_pool(local("10.40.0.0/24")).subnet == net("10.40.0.0/24")


def test_a_second_global_network_cannot_share_a_held_subnet(store_factory: Callable[[], Store]) -> None:
    """The swarm allocator's replay and a second overlay with the same --subnet send the same RequestPool;
    only the gateway tells them apart, and the second network's rollback leaves the first one's pool whole."""
    manager = Allocator(store_factory(), settings("manager"))
    first = manager.request_pool(glob("10.40.0.0/24"))
    gateway = manager.request_address(first.pool_id, gateway=True, serial=True)
    task = manager.request_address(first.pool_id, serial=True)
    second = manager.request_pool(glob("10.40.0.0/24"))  # indistinguishable from a replay: granted
    with pytest.raises(Conflict, match=r"overlaps 10.40.0.0/24, held in address space global by host manager .*"
                       r"whose gateway is 10.40.0.1: it serves one swarm network"):  # fmt: skip
        manager.request_address(second.pool_id, gateway=True, serial=True)
    with pytest.raises(Conflict, match="whose gateway is 10.40.0.1"):
        manager.request_address(second.pool_id, ip("10.40.0.9"), gateway=True)
    # Swarm's rollback releases the pool it was granted: the first network's pool stays, whole.
    with pytest.raises(Conflict, match=r"not released: its gateway 10.40.0.1 is still claimed"):
        manager.release_pool(second.pool_id)
    assert addresses_of(manager.store, net("10.40.0.0/24"), "global") == [gateway.ip, task.ip]
    # A replay names the gateway it had: still granted.
    assert manager.request_address(first.pool_id, gateway.ip, gateway=True) == gateway
    # A network removed in Docker's order (gateway, then pool) is gone with all its addresses.
    manager.release_address(first.pool_id, gateway.ip)
    manager.release_pool(first.pool_id)
    assert manager.store.blocks() == []


def test_a_global_network_named_with_its_gateway_keeps_it(allocator: Allocator) -> None:
    pool = allocator.request_pool(glob("10.40.0.0/24"))
    assert str(allocator.request_address(pool.pool_id, ip("10.40.0.254"), gateway=True)) == "10.40.0.254/24"
    with pytest.raises(Conflict, match="whose gateway is 10.40.0.254"):
        allocator.request_address(pool.pool_id, gateway=True)


def test_a_local_network_cannot_join_a_nodes_copy(store_factory: Callable[[], Store]) -> None:
    """A bridge with --subnet <overlay subnet> asks for the copy's pool, then for a gateway of its own."""
    manager = Allocator(store_factory(), settings("manager"))
    worker = Allocator(store_factory(), settings("worker"))
    pool = manager.request_pool(glob("10.40.0.0/24"))
    manager.request_address(pool.pool_id, ip("10.40.0.1"), gateway=True)
    copy = worker.request_pool(local("10.40.0.0/24"))
    worker.request_address(copy.pool_id, ip("10.40.0.1"), gateway=True)
    worker.request_address(copy.pool_id, ip("10.40.0.3"))
    bridge = worker.request_pool(local("10.40.0.0/24"))  # the same request as the copy's after a crash
    for address in (None, ip("10.40.0.7")):
        with pytest.raises(Conflict, match="overlaps 10.40.0.0/24, held in address space global by host manager"):
            worker.request_address(bridge.pool_id, address, gateway=True)
    with pytest.raises(Conflict, match="not released"):
        worker.release_pool(bridge.pool_id)
    assert addresses_of(worker.store, net("10.40.0.0/24"), "local@worker") == [ip("10.40.0.1"), ip("10.40.0.3")]
    # On a node without a copy the bridge's pool is the node's new copy, refused at its gateway, then released.
    other = Allocator(store_factory(), settings("other"))
    orphan = other.request_pool(local("10.40.0.0/24"))
    with pytest.raises(Conflict, match="it serves one swarm network"):
        other.request_address(orphan.pool_id, gateway=True)
    other.release_pool(orphan.pool_id)
    assert other.store.pool(net("10.40.0.0/24"), "local@other") is None


def test_copies_need_the_same_ip_range(allocator: Allocator) -> None:
    allocator.request_pool(glob("10.40.0.0/24", "10.40.0.128/25"))
    with pytest.raises(Conflict):
        allocator.request_pool(local("10.40.0.0/24"))
    assert str(allocator.request_pool(local("10.40.0.0/24", "10.40.0.128/25")).pool_id) == (
        "local/10.40.0.0/24/10.40.0.128/25"
    )


def test_a_local_pool_of_another_host_cannot_be_released_here(store_factory: Callable[[], Store]) -> None:
    a = Allocator(store_factory(), settings("host-a"))
    b = Allocator(store_factory(), settings("host-b"))
    pool = a.request_pool(local())
    with pytest.raises(PoolNotFound, match="not held by host-b"):
        b.release_pool(pool.pool_id)
    with pytest.raises(Conflict, match="by host host-a"):
        b.request_pool(local(str(pool.subnet)))


def test_gateway_is_the_first_host_and_containers_follow(allocator: Allocator) -> None:
    pool = allocator.request_pool(local(size=29))
    assert str(allocator.request_address(pool.pool_id, gateway=True)) == "10.20.0.1/29"
    got = [str(allocator.request_address(pool.pool_id)) for _ in range(5)]
    assert got == [f"10.20.0.{i}/29" for i in range(2, 7)]
    with pytest.raises(Exhausted, match=r"no free address left in pool local/10.20.0.0/29 \(10.20.0.1 to 10.20.0.6\)"):
        allocator.request_address(pool.pool_id)


def test_gateway_with_an_ip_range_is_its_first_host(allocator: Allocator) -> None:
    pool = allocator.request_pool(local("10.50.0.0/24", "10.50.0.128/25"))
    assert str(allocator.request_address(pool.pool_id, gateway=True)) == "10.50.0.128/24"
    assert str(allocator.request_address(pool.pool_id)) == "10.50.0.129/24"
    # aux addresses and --ip may lie outside the range, inside the subnet
    assert str(allocator.request_address(pool.pool_id, ip("10.50.0.5"))) == "10.50.0.5/24"


def test_ip_range_at_the_start_skips_the_network_address(allocator: Allocator) -> None:
    pool = allocator.request_pool(local("10.50.0.0/24", "10.50.0.0/30"))
    assert str(allocator.request_address(pool.pool_id, gateway=True)) == "10.50.0.1/24"
    assert str(allocator.request_address(pool.pool_id)) == "10.50.0.2/24"
    assert str(allocator.request_address(pool.pool_id)) == "10.50.0.3/24"
    with pytest.raises(Exhausted):
        allocator.request_address(pool.pool_id)


def test_an_explicit_gateway_that_is_taken_is_refused(allocator: Allocator) -> None:
    pool = allocator.request_pool(local("10.50.0.0/24"))
    allocator.request_address(pool.pool_id, ip("10.50.0.9"))
    with pytest.raises(Conflict, match="10.50.0.9 is already in use"):
        allocator.request_address(pool.pool_id, ip("10.50.0.9"), gateway=True)


def test_a_default_gateway_that_is_taken_falls_back_to_the_lowest_free(allocator: Allocator) -> None:
    pool = allocator.request_pool(local("10.50.0.0/24"))
    allocator.request_address(pool.pool_id, ip("10.50.0.1"))
    assert str(allocator.request_address(pool.pool_id, gateway=True)) == "10.50.0.2/24"


def test_serial_addresses_rotate(allocator: Allocator) -> None:
    pool = allocator.request_pool(local(size=29))
    first = allocator.request_address(pool.pool_id, serial=True)
    allocator.release_address(pool.pool_id, first.ip)
    second = allocator.request_address(pool.pool_id, serial=True)
    assert second.ip == first.ip + 1


def test_reserved_and_outside_addresses(allocator: Allocator) -> None:
    pool = allocator.request_pool(local("10.50.0.0/24"))
    for bad in ("10.50.0.0", "10.50.0.255", "10.51.0.1", "fd00::1"):
        with pytest.raises(InvalidRequest):
            allocator.request_address(pool.pool_id, ip(bad))


def test_release_address_errors(allocator: Allocator) -> None:
    pool = allocator.request_pool(local("10.50.0.0/24"))
    with pytest.raises(AddressNotFound):
        allocator.release_address(pool.pool_id, ip("10.50.0.77"))
    with pytest.raises(PoolNotFound):
        allocator.release_address(PoolId.parse("local/10.60.0.0/24"), ip("10.60.0.7"))


def test_release_pool_frees_addresses_and_the_subnet(allocator: Allocator, store: Store) -> None:
    pool = allocator.request_pool(local(size=28))
    allocator.request_address(pool.pool_id, gateway=True)
    allocator.request_address(pool.pool_id)
    allocator.release_pool(pool.pool_id)
    assert store.blocks() == [] and store.pools() == []
    with pytest.raises(PoolNotFound):
        allocator.release_pool(pool.pool_id)
    assert allocator.request_pool(local(size=22)).subnet == net("10.20.0.0/22")


def test_ipv6_pools_and_addresses(allocator: Allocator) -> None:
    pool = allocator.request_pool(PoolRequest(space="local", v6=True))
    assert str(pool.pool_id) == "local/fd00:20::/64"
    assert str(allocator.request_address(pool.pool_id, gateway=True)) == "fd00:20::1/64"
    assert str(allocator.request_address(pool.pool_id)) == "fd00:20::2/64"
    explicit = allocator.request_pool(PoolRequest(space="local", v6=True, subnet=net("fd99::/64")))
    assert explicit.subnet == net("fd99::/64")
    with pytest.raises(InvalidRequest, match="not an IPv6 subnet"):
        allocator.request_pool(PoolRequest(space="local", v6=True, subnet=net("10.9.0.0/24")))


def test_the_ula_parent_is_made_once_and_kept(store_factory: Callable[[], Store]) -> None:
    first = Allocator(store_factory(), settings(parents6=()))
    ula = first.parents6[0]
    assert ula.prefixlen == 48 and ula.subnet_of(net("fd00::/8"))  # type: ignore[arg-type]
    pool = first.request_pool(PoolRequest(space="local", v6=True))
    assert pool.subnet.subnet_of(ula)  # type: ignore[arg-type]
    second = Allocator(store_factory(), settings(parents6=()))
    assert second.parents6 == (ula,)
