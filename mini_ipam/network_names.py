"""Which Docker network each pool serves, as the local engine tells it (for ``mini-ipam ls``).

The engine's networks name their subnets in ``IPAM.Config``. A subnet is claimed by one
network only (a swarm network's node copies share its subnet, and its name), so a pool is
found by its subnet and ip-range. A network made with ``--subnet 0.0.0.0/N`` (or ``::/N``,
the compose v2 way to ask for a size) shows that text rather than the subnet it got: its
real subnet is read from its gateway or its endpoints' addresses, which carry the prefix.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from mini_ipam.docker_engine import Engine, EngineError
from mini_ipam.pool_id import PoolId
from mini_ipam.protocol import is_any_subnet
from stores import Network

log = logging.getLogger(__name__)

PoolKey = tuple[Network, Network | None]
"""A pool's subnet and ip-range: what an engine network's IPAM config names too."""


def names_by_pool(url: str, driver: str, timeout: float = 3.0) -> dict[PoolKey, str]:
    """(subnet, ip-range) → network name for every network of ``driver`` on the engine at ``url``.

    Empty when the engine cannot be asked: a listing works without an engine, it only
    shows no names then.
    """
    try:
        networks = Engine(url, timeout=timeout).networks(driver)
    except (EngineError, AssertionError, OSError) as exc:
        log.debug("no network names: %s", exc)
        return {}
    found: dict[PoolKey, str] = {}
    for network in networks:
        for key in _pool_keys(network):
            found[key] = str(network.get("Name"))
    return found


def name_of(pool_id: str, names: dict[PoolKey, str]) -> str | None:
    """The name of the network that a pool (by its PoolID text) serves, if the engine knows it."""
    parsed = PoolId.parse(pool_id)
    return names.get((parsed.subnet, parsed.ip_range))


def _pool_keys(network: dict[str, Any]) -> list[PoolKey]:
    keys: list[PoolKey] = []
    for config in (network.get("IPAM") or {}).get("Config") or []:
        try:
            subnet = ipaddress.ip_network(config.get("Subnet") or "")
            ip_range = ipaddress.ip_network(config["IPRange"]) if config.get("IPRange") else None
        except ValueError:
            continue
        if is_any_subnet(subnet):
            real = _real_subnet(network, config, subnet.version, subnet.prefixlen)
            if real is None:
                continue
            subnet = real
        keys.append((subnet, ip_range))
    return keys


def _real_subnet(network: dict[str, Any], config: dict[str, Any], version: int, prefixlen: int) -> Network | None:
    """The subnet a ``0.0.0.0/N`` network got: its gateway's or an endpoint's /N."""
    candidates = [(config.get("Gateway") or "").split("/")[0]]
    key = "IPv6Address" if version == 6 else "IPv4Address"
    candidates += [(endpoint.get(key) or "").split("/")[0] for endpoint in (network.get("Containers") or {}).values()]
    for text in candidates:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.version == version and int(address) != 0:
            return ipaddress.ip_network((address, prefixlen), strict=False)
    return None
