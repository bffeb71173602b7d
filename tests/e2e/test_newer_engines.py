"""What differs between the engines of the matrix, on each engine.

* Every engine is driven by its own docker CLI (a newer static CLI elsewhere on PATH would
  otherwise talk to an old engine with a client it never shipped with).
* IPv6-only networks (``--ipv6 --ipv4=false``, engine 28 and later): the engine asks the driver
  for the IPv6 pool only; the network and its containers have no IPv4 at all. Older engines
  refuse the flag, and nothing is claimed.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from typing import Any

import pytest

from tests.e2e.engines import Engine, Host, run

pytestmark = [pytest.mark.docker]


def driver_pools(host: Host) -> list[dict[str, Any]]:
    """The driver's pools, from ``mini-ipam ls --json`` on the host's store."""
    result = run([sys.executable, "-m", "mini_ipam", "ls", "--json", "--store", host.driver.store], timeout=60)
    pools: list[dict[str, Any]] = json.loads(result.stdout)["pools"]
    return pools


def test_the_client_is_the_engines_own(engine: Engine) -> None:
    assert engine.release is not None
    versions = engine.run_json("version", "--format", "{{json .}}")
    assert versions["Server"]["Version"].startswith(engine.release.version), versions["Server"]
    assert versions["Client"]["Version"].startswith(engine.release.version), versions["Client"]


def test_ipv6_only_network(host: Host, engine: Engine) -> None:
    assert engine.release is not None
    args = ("--ipv6", "--ipv4=false", "--ipam-opt", "size6=80")
    if engine.release.major < 28:
        refused = host.try_network("only6", *args)
        assert refused.returncode != 0 and "ipv4" in refused.stderr, refused.stderr
        assert driver_pools(host) == [], "a refused network left a pool"
        return

    network = host.create_network("only6", *args)
    (subnet,) = network.subnets()
    assert isinstance(subnet, ipaddress.IPv6Network) and subnet.prefixlen == 80, network.configs
    assert subnet.subnet_of(ipaddress.IPv6Network("fc00::/7")), subnet
    assert network.raw["EnableIPv4"] is False, network.raw
    (pool,) = driver_pools(host)  # no IPv4 RequestPool at all
    assert ipaddress.ip_network(pool["subnet"]) == subnet, pool

    first, second = host.start_containers(("six1", "only6"), ("six2", "only6"))
    (first6,) = engine.addresses(first, version=6)
    (second6,) = engine.addresses(second, version=6)
    assert first6.network == second6.network == subnet and first6 != second6, (first6, second6)
    assert engine.addresses(first, version=4) == [], "a container of an IPv6-only network has IPv4"
    assert engine.ping(first, second6.ip)
    (pool,) = driver_pools(host)
    assert {str(first6.ip), str(second6.ip)} <= set(pool["addresses"]), pool

    engine.wipe()
    assert driver_pools(host) == [], "the IPv6-only network's pool outlived it"
