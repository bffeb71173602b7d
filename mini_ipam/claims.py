"""This host's claims, read and changed either in the store or through the running driver.

Reconciling needs to list this host's local pools with their addresses, and to
release or re-claim single pools and addresses. A Redis store can be used
directly; a file store belongs to its running driver (it holds the file's lock),
so then every read and change goes through the driver's socket, with the same
protocol calls the engine makes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Protocol

from mini_ipam import protocol
from mini_ipam.allocator import Allocator, PoolRequest
from mini_ipam.errors import IpamError
from mini_ipam.pool_id import LOCAL, PoolId, pool_id_of, scope_of
from mini_ipam.unix_http import UnixHTTPError, get_json, request_json


class ClaimRefused(Exception):
    """A release or claim was refused; the message says why."""


@dataclass(frozen=True)
class HeldPool:
    """One of this host's local pools: when it was claimed, and its addresses."""

    pool_id: str
    since: float
    addresses: dict[str, tuple[float, str]]  # address -> (since, note)


class ClaimBook(Protocol):
    """This host's claims."""

    def held(self) -> dict[str, HeldPool]:
        """Every local pool of this host, by PoolID."""
        ...

    def release(self, pool_id: str, address: str | None) -> None:
        """Release a pool (``address`` None) or one address of it; ClaimRefused when refused."""
        ...

    def claim(self, pool_id: str, address: str | None, gateway: bool = False) -> None:
        """Claim exactly a pool (``address`` None) or one address in it; ClaimRefused when refused."""
        ...


class StoreClaims:
    """Claims read and changed in the store, through an Allocator."""

    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    def held(self) -> dict[str, HeldPool]:
        store = self.allocator.store
        scope = scope_of(LOCAL, self.allocator.settings.host_id)
        found: dict[str, HeldPool] = {}
        for pool in store.pools():
            if pool.scope != scope:
                continue
            pool_id = str(pool_id_of(pool))
            addresses = {str(c.address): (c.since, c.note) for c in store.address_claims(pool.subnet, scope)}
            found[pool_id] = HeldPool(pool_id, pool.since, addresses)
        return found

    def release(self, pool_id: str, address: str | None) -> None:
        try:
            if address is None:
                self.allocator.release_pool(PoolId.parse(pool_id))
            else:
                self.allocator.release_address(PoolId.parse(pool_id), ipaddress.ip_address(address))
        except IpamError as exc:
            raise ClaimRefused(str(exc)) from None

    def claim(self, pool_id: str, address: str | None, gateway: bool = False) -> None:
        parsed = PoolId.parse(pool_id)
        try:
            if address is None:
                self.allocator.request_pool(
                    PoolRequest(space=LOCAL, v6=parsed.subnet.version == 6, subnet=parsed.subnet,
                                ip_range=parsed.ip_range)
                )  # fmt: skip
            else:
                self.allocator.request_address(parsed, ipaddress.ip_address(address), gateway=gateway)
        except IpamError as exc:
            raise ClaimRefused(str(exc)) from None


class DriverClaims:
    """Claims read (``GET /inventory``) and changed (the IpamDriver calls) through a running driver."""

    def __init__(self, socket_path: str, host_id: str) -> None:
        self.socket_path = socket_path
        self.host_id = host_id

    def _call(self, method: str, body: Any) -> None:
        try:
            status, reply = request_json(self.socket_path, "POST", protocol.path(method), body)
        except UnixHTTPError as exc:
            raise ClaimRefused(f"the driver on {self.socket_path} {exc}") from None
        if status != 200:
            raise ClaimRefused(str((reply or {}).get("Err", f"status {status}")))

    def held(self) -> dict[str, HeldPool]:
        try:
            status, inventory = get_json(self.socket_path, "/inventory")
        except UnixHTTPError as exc:
            raise ClaimRefused(f"the driver on {self.socket_path} {exc}") from None
        if status != 200 or not isinstance(inventory, dict):
            raise ClaimRefused(f"the driver on {self.socket_path} answered {status} to GET /inventory")
        found: dict[str, HeldPool] = {}
        for pool in inventory["pools"]:
            if pool["space"] != LOCAL or pool["owner"] != self.host_id:
                continue
            addresses = {c["address"]: (c["since"], c["note"]) for c in pool["claims"]}
            found[pool["pool_id"]] = HeldPool(pool["pool_id"], pool["since"], addresses)
        return found

    def release(self, pool_id: str, address: str | None) -> None:
        if address is None:
            self._call(protocol.RELEASE_POOL, protocol.release_pool(pool_id))
        else:
            self._call(protocol.RELEASE_ADDRESS, protocol.release_address(pool_id, address))

    def claim(self, pool_id: str, address: str | None, gateway: bool = False) -> None:
        parsed = PoolId.parse(pool_id)
        if address is None:
            sub_pool = str(parsed.ip_range) if parsed.ip_range else ""
            body = protocol.request_pool(LOCAL, str(parsed.subnet), sub_pool, {}, parsed.subnet.version == 6)
            self._call(protocol.REQUEST_POOL, body)
        else:
            self._call(protocol.REQUEST_ADDRESS, protocol.request_address(pool_id, address, {}, gateway=gateway))
