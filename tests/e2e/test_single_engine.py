"""One real engine, the driver as a legacy plugin, real containers.

Every test starts from an empty engine and leaves it empty; the ``engine``
fixture then proves the driver released everything (both whole parents, IPv4
and IPv6, can be handed out as one network again).
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.engines import Engine, Host, assert_disjoint, parse_ip_addr

pytestmark = pytest.mark.docker

SIZES = (28, 26, 29, 24, 30)


def test_sizes_nest_in_the_parent_and_never_overlap(host: Host, engine: Engine, parent: ipaddress.IPv4Network) -> None:
    networks = [host.create_network(f"size{size}", "--ipam-opt", f"size={size}") for size in SIZES]

    for size, network in zip(SIZES, networks, strict=True):
        assert network.driver == host.driver.name
        assert network.subnet.prefixlen == size, network.configs
        assert network.subnet.subnet_of(parent), f"{network.subnet} is not inside {parent}"
        assert network.gateway(network.subnet) == network.subnet.network_address + 1, network.configs
    assert_disjoint([subnet for network in engine.networks() for subnet in network.subnets()])

    containers = host.start_containers(*[(f"in-{network.name}", network.name) for network in networks])
    for size, network, container in zip(SIZES, networks, containers, strict=True):
        address = engine.address(container)
        assert address.network == network.subnet, f"{container} got {address}, outside {network.subnet}"
        assert address.ip not in (network.gateway(network.subnet), network.subnet.broadcast_address)
        # The engine's bridge holds the gateway address: the driver's answer became a real interface.
        bridge = parse_ip_addr(engine.namespace.ip("-4", "addr", "show", "dev", network.bridge).stdout)
        assert bridge == [ipaddress.IPv4Interface(f"{network.gateway(network.subnet)}/{size}")], bridge


def test_a_30_holds_the_gateway_and_one_container(host: Host, engine: Engine) -> None:
    network = host.create_network("tiny", "--ipam-opt", "size=30")
    only = engine.address(host.start_container("tiny1", "tiny"))
    assert only.ip == network.subnet[2], only
    full = host.try_container("tiny2", "tiny")
    assert full.returncode != 0
    assert "no free address" in full.stderr and str(network.subnet) in full.stderr, full.stderr


def test_connect_disconnect_stop_start_release_and_reclaim(host: Host, engine: Engine) -> None:
    host.create_network("home", "--ipam-opt", "size=28")
    away = host.create_network("away", "--subnet", "198.19.97.0/28")
    container = host.start_container("roamer", "home")

    engine.docker("network", "connect", "--ip", "198.19.97.9", "away", container, check=True)
    assert ipaddress.IPv4Interface("198.19.97.9/28") in engine.addresses(container, device=None)
    engine.docker("network", "connect", "away", host.start_container("other", "home"), check=True)
    assert ipaddress.IPv4Interface("198.19.97.2/28") in engine.addresses("other", device=None)

    # Disconnecting releases the address: the next container on the network may take it.
    engine.docker("network", "disconnect", "away", container, check=True)
    taker = host.start_container("taker", "away", "--ip", "198.19.97.9")
    assert engine.address(taker).ip == ipaddress.IPv4Address("198.19.97.9")
    assert engine.ping(taker, "198.19.97.2")

    assert engine.gateway(away) == ipaddress.IPv4Address("198.19.97.1")

    # Stop releases, start claims again (the lowest free addresses: here its old ones).
    before = set(engine.addresses("other", device=None))
    engine.docker("stop", "-t", "1", "other", check=True)
    engine.docker("start", "other", check=True)
    assert set(engine.addresses("other", device=None)) == before


def test_racing_containers_get_exactly_the_free_addresses(host: Host, engine: Engine) -> None:
    """Eight containers at once on a /29 (five addresses after the gateway): five start, three are refused."""
    network = host.create_network("race", "--ipam-opt", "size=29")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: host.try_container(f"racer{i}", "race"), range(8)))
    started = [f"racer{i}" for i, result in enumerate(results) if result.returncode == 0]
    refused = [result.stderr for result in results if result.returncode != 0]
    assert len(started) == 5, refused
    assert {engine.address(name).ip for name in started} == set(list(network.subnet.hosts())[1:])
    assert all("no free address" in message for message in refused), refused


def test_two_containers_on_one_network_ping_each_other(host: Host, engine: Engine) -> None:
    network = host.create_network("pingnet", "--ipam-opt", "size=28")
    first = host.start_container("ping1", "pingnet")
    second = host.start_container("ping2", "pingnet")
    first_address, second_address = engine.address(first), engine.address(second)

    assert first_address != second_address
    assert {first_address.network, second_address.network} == {network.subnet}
    assert engine.ping(first, second_address.ip)
    assert engine.ping(second, first_address.ip)
    assert engine.ping(first, network.gateway(network.subnet))


def test_subnet_ip_range_gateway_and_aux_address(host: Host, engine: Engine, parent: ipaddress.IPv4Network) -> None:
    # An explicit subnet inside the parent; dynamic addresses must come from the /30 range,
    # whose second address is reserved as an aux address and the gateway sits outside it.
    network = host.create_network(
        "explicit",
        "--subnet",
        "198.19.96.0/24",
        "--ip-range",
        "198.19.96.8/30",
        "--gateway",
        "198.19.96.254",
        "--aux-address",
        "router=198.19.96.9",
    )
    (config,) = network.configs
    assert config["Subnet"] == "198.19.96.0/24"
    assert config["IPRange"] == "198.19.96.8/30"
    assert config["Gateway"] == "198.19.96.254"
    assert config["AuxiliaryAddresses"] == {"router": "198.19.96.9"}
    assert network.subnet.subnet_of(parent)

    # Fill the range: three containers, never the aux address, then a clear refusal.
    addresses = {engine.address(host.start_container(f"dyn{i}", "explicit")).ip for i in range(3)}
    assert addresses == {ipaddress.IPv4Address(a) for a in ("198.19.96.8", "198.19.96.10", "198.19.96.11")}
    full = host.try_container("dyn3", "explicit")
    assert full.returncode != 0
    assert "no free address" in full.stderr and "198.19.96.8" in full.stderr, full.stderr

    route = engine.docker("exec", "dyn0", "ip", "route", check=True).stdout
    assert "default via 198.19.96.254 " in route, route


def test_run_ip_gets_exactly_that_address_once(host: Host, engine: Engine) -> None:
    host.create_network("fixed", "--subnet", "198.19.95.0/24", "--ip-range", "198.19.95.128/25")

    # --ip may lie outside the ip-range, anywhere in the subnet.
    container = host.start_container("fixed1", "fixed", "--ip", "198.19.95.10")
    assert engine.address(container) == ipaddress.IPv4Interface("198.19.95.10/24")

    again = host.try_container("fixed2", "fixed", "--ip", "198.19.95.10")
    assert again.returncode != 0
    assert "198.19.95.10" in again.stderr and "already in use" in again.stderr, again.stderr
    # The refused container changed nothing: the first one keeps the address, dynamic ones come from the range.
    dynamic = engine.address(host.start_container("fixed3", "fixed"))
    assert dynamic.ip in ipaddress.IPv4Network("198.19.95.128/25"), dynamic
    assert engine.ping("fixed3", "198.19.95.10")


def test_aux_address_cannot_be_taken_by_run_ip(host: Host, engine: Engine) -> None:
    host.create_network("aux", "--subnet", "198.19.94.0/28", "--aux-address", "nas=198.19.94.5")
    taken = host.try_container("aux1", "aux", "--ip", "198.19.94.5")
    assert taken.returncode != 0
    assert "198.19.94.5" in taken.stderr and "already in use" in taken.stderr, taken.stderr
    # Dynamic addresses skip it too: .2 .3 .4 then .6.
    got = [engine.address(host.start_container(f"aux-dyn{i}", "aux")).ip for i in range(4)]
    assert [str(ip) for ip in got] == ["198.19.94.2", "198.19.94.3", "198.19.94.4", "198.19.94.6"]


def test_ipv6_network_gives_containers_a_global_address_in_a_64(host: Host, engine: Engine) -> None:
    network = host.create_network("dual", "--ipv6")
    (subnet6,) = network.subnets(6)
    assert subnet6.prefixlen == 64, network.configs
    assert isinstance(subnet6, ipaddress.IPv6Network)
    assert subnet6.subnet_of(ipaddress.IPv6Network("fc00::/7")), f"default IPv6 parent should be a ULA: {subnet6}"
    assert network.gateway(subnet6) == subnet6.network_address + 1
    assert len(network.subnets(4)) == 1

    first, second = host.start_containers(("v6a", "dual"), ("v6b", "dual"))
    (first6,) = engine.addresses(first, version=6)
    (second6,) = engine.addresses(second, version=6)
    assert first6.network == subnet6 and second6.network == subnet6, (first6, second6)
    assert first6 != second6
    assert engine.address(first).network == network.subnet
    assert engine.ping(first, second6.ip)

    # size6 picks the IPv6 prefix length, inside the same /48 parent.
    narrow = host.create_network("dual80", "--ipv6", "--ipam-opt", "size6=80")
    (subnet80,) = narrow.subnets(6)
    assert subnet80.prefixlen == 80 and subnet80.supernet(new_prefix=48) == subnet6.supernet(new_prefix=48)
    assert not subnet80.overlaps(subnet6)
    (address80,) = engine.addresses(host.start_container("v6c", "dual80"), version=6)
    assert address80.network == subnet80


def test_two_subnets_on_one_network(host: Host, engine: Engine) -> None:
    # One IPv4 and one IPv6 subnet, both explicit: two RequestPools for one network.
    network = host.create_network("two", "--ipv6", "--subnet", "198.19.93.0/28", "--subnet", "fd00:e2e:93::/64")
    assert network.subnets() == [ipaddress.ip_network("198.19.93.0/28"), ipaddress.ip_network("fd00:e2e:93::/64")]
    container = host.start_container("two1", "two", "--ip6", "fd00:e2e:93::99")
    assert engine.address(container) == ipaddress.IPv4Interface("198.19.93.2/28")
    assert engine.addresses(container, version=6) == [ipaddress.IPv6Interface("fd00:e2e:93::99/64")]


def test_two_ipv4_subnets_refused_by_the_bridge_release_both_pools(host: Host, engine: Engine) -> None:
    # The bridge driver takes one IPv4 subnet; the engine asks the IPAM driver for both pools before the bridge
    # refuses, then rolls back. (This kernel has no macvlan/ipvlan, whose networks could hold two.)
    refused = host.try_network("twov4", "--subnet", "198.19.92.0/28", "--subnet", "198.19.92.16/28")
    assert refused.returncode != 0
    assert "multiple subnets" in refused.stderr, refused.stderr
    assert "twov4" not in engine.docker("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
    # Both pools came back: each can be claimed again.
    host.create_network("again1", "--subnet", "198.19.92.0/28")
    host.create_network("again2", "--subnet", "198.19.92.16/28")
    log = host.driver.log_text()
    assert "RequestPool pool=local/198.19.92.16/28 ok" in log, "the engine never asked for the second pool"


# -- what the user reads when a request is refused ------------------------------------------


def test_bad_sizes_are_explained(host: Host, engine: Engine, parent: ipaddress.IPv4Network) -> None:
    too_small = host.try_network("bad31", "--ipam-opt", "size=31")
    assert too_small.returncode != 0
    assert "/31" in too_small.stderr and "/30" in too_small.stderr and str(parent) in too_small.stderr

    not_a_number = host.try_network("badabc", "--ipam-opt", "size=abc")
    assert not_a_number.returncode != 0
    assert "abc" in not_a_number.stderr and "prefix length" in not_a_number.stderr, not_a_number.stderr

    too_wide = host.try_network("bad8", "--ipam-opt", "size=8")
    assert too_wide.returncode != 0
    assert "/8" in too_wide.stderr and str(parent) in too_wide.stderr, too_wide.stderr

    contradiction = host.try_network("badmix", "--ipam-opt", "size=28", "--subnet", "198.19.50.0/24")
    assert contradiction.returncode != 0
    assert "/28" in contradiction.stderr and "198.19.50.0/24" in contradiction.stderr, contradiction.stderr

    names = engine.docker("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
    assert not {"bad31", "badabc", "bad8", "badmix"} & set(names)


def test_overlapping_subnet_names_the_holder(host: Host, engine: Engine) -> None:
    held = host.create_network("holder", "--ipam-opt", "size=28")
    wider = held.subnet.supernet(new_prefix=24)
    refused = host.try_network("overlap", "--subnet", str(wider))
    assert refused.returncode != 0
    message = refused.stderr
    assert "overlaps" in message and str(wider) in message and str(held.subnet) in message, message
    assert "host h1" in message, f"the message should name the holder's host: {message}"

    same = host.try_network("same", "--subnet", str(held.subnet))
    assert same.returncode != 0 and "overlaps" in same.stderr, same.stderr


def test_exhausted_parent_is_explained(host: Host, engine: Engine, parent: ipaddress.IPv4Network) -> None:
    # Two networks of half the parent each fill it.
    half = parent.prefixlen + 1
    halves = [host.create_network(f"half{i}", "--ipam-opt", f"size={half}").subnet for i in range(2)]
    assert sorted(halves) == sorted(parent.subnets(prefixlen_diff=1))

    refused = host.try_network("nomore", "--ipam-opt", "size=28")
    assert refused.returncode != 0
    assert "no free /28" in refused.stderr and str(parent) in refused.stderr, refused.stderr

    # Freeing one half makes room again, at the lowest free place.
    engine.docker("network", "rm", "half0", check=True)
    assert host.create_network("room", "--ipam-opt", "size=28").subnet.network_address == parent.network_address


def test_network_rm_frees_everything(host: Host, engine: Engine, parent: ipaddress.IPv4Network) -> None:
    """After ``network rm`` of everything (containers gone first), all of the parent is free again."""
    for size in SIZES:
        host.create_network(f"tmp{size}", "--ipam-opt", f"size={size}")
    host.create_network("tmp-explicit", "--subnet", "198.19.91.0/24", "--aux-address", "a=198.19.91.7")
    host.create_network("tmp-v6", "--ipv6", "--ipam-opt", "size=27")
    host.start_containers(
        *[(f"tmp{size}-c", f"tmp{size}") for size in SIZES],
        ("tmp-explicit-c", "tmp-explicit", "--ip", "198.19.91.8"),
        ("tmp-v6-c", "tmp-v6"),
    )

    engine.wipe()

    whole = host.create_network("whole", "--ipam-opt", f"size={parent.prefixlen}")
    assert whole.subnet == parent
    container = host.start_container("whole-c", "whole")
    assert engine.address(container) == ipaddress.IPv4Interface(f"{parent[2]}/{parent.prefixlen}")
