"""What the local Docker engine uses of this driver's claims, read from its API socket."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from mini_ipam.pool_id import LOCAL, PoolId
from mini_ipam.unix_http import UnixHTTPError, get_json


class EngineError(Exception):
    """The engine API could not be read."""


@dataclass(frozen=True)
class EngineSubnet:
    """One IPAM config entry of a network, with the addresses the engine knows it uses."""

    network: str
    subnet: str
    ip_range: str | None
    gateway: str | None
    addresses: frozenset[str] = field(default_factory=frozenset)  # gateway, aux and endpoint addresses

    @property
    def pool_id(self) -> str:
        """The PoolID mini-ipam gave this subnet on this host."""
        ip_range = ipaddress.ip_network(self.ip_range) if self.ip_range else None
        return str(PoolId(LOCAL, ipaddress.ip_network(self.subnet), ip_range))


class Engine:
    """A read-only view of an engine's networks, through ``unix:///path/docker.sock``."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "unix" or not parts.path:
            raise EngineError(f"the engine API must be a unix:///path/docker.sock URL, not {url!r}")
        self.socket_path = parts.path
        self.timeout = timeout

    def _get(self, path: str) -> object:
        try:
            status, body = get_json(self.socket_path, path, timeout=self.timeout)
        except UnixHTTPError as exc:
            raise EngineError(f"the Docker engine at {self.socket_path} {exc}") from None
        if status != 200:
            raise EngineError(f"the Docker engine answered {status} to GET {path}: {body}")
        return body

    def subnets(self, driver: str) -> list[EngineSubnet]:
        """Every subnet of every network whose IPAM driver is ``driver``, with the addresses in use."""
        return [subnet for detail in self.networks(driver) for subnet in _subnets_of(detail)]

    def networks(self, driver: str) -> list[dict[str, Any]]:
        """``GET /networks/<id>`` of every network whose IPAM driver is ``driver`` (or ``driver:latest``)."""
        found: list[dict[str, Any]] = []
        listed = self._get("/networks")
        assert isinstance(listed, list)
        for summary in listed:
            if (summary.get("IPAM") or {}).get("Driver") not in (driver, f"{driver}:latest"):
                continue
            detail = self._get(f"/networks/{quote(summary['Id'])}")
            assert isinstance(detail, dict)
            found.append(detail)
        return found


def _subnets_of(network: dict[str, Any]) -> list[EngineSubnet]:
    endpoints: list[str] = []
    for container in (network.get("Containers") or {}).values():
        for key in ("IPv4Address", "IPv6Address"):
            if container.get(key):
                endpoints.append(container[key].split("/")[0])
    subnets = []
    for config in (network.get("IPAM") or {}).get("Config") or []:
        subnet = ipaddress.ip_network(config["Subnet"])
        gateway = (config.get("Gateway") or "").split("/")[0] or None
        used = {gateway} if gateway else set()
        used.update((config.get("AuxiliaryAddresses") or {}).values())
        used.update(a for a in endpoints if ipaddress.ip_address(a) in subnet)
        subnets.append(
            EngineSubnet(
                network=str(network.get("Name")),
                subnet=str(subnet),
                ip_range=config.get("IPRange") or None,
                gateway=gateway,
                addresses=frozenset(used),
            )
        )
    return subnets
