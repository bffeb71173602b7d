"""PoolIDs: self-describing names for pools, valid across restarts and hosts.

``<space>/<subnet>[/<ip-range>]``, for example ``local/10.1.2.0/28``,
``global/10.5.0.0/24/10.5.0.128/25`` or ``local/fd12:3456:789a:1::/64``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mini_ipam.errors import InvalidRequest
from stores import Network

SPACES = ("local", "global")


@dataclass(frozen=True)
class PoolId:
    """A parsed PoolID."""

    space: str
    subnet: Network
    ip_range: Network | None = None

    def __str__(self) -> str:
        text = f"{self.space}/{self.subnet}"
        return text if self.ip_range is None else f"{text}/{self.ip_range}"

    @classmethod
    def parse(cls, text: str) -> PoolId:
        """Parse a PoolID; InvalidRequest names what is wrong with it."""
        parts = text.split("/")
        if len(parts) not in (3, 5) or parts[0] not in SPACES:
            raise InvalidRequest(f"malformed PoolID {text!r}: expected <local|global>/<subnet>[/<ip-range>]")
        try:
            subnet = ipaddress.ip_network("/".join(parts[1:3]))
            ip_range = ipaddress.ip_network("/".join(parts[3:5])) if len(parts) == 5 else None
        except ValueError as exc:
            raise InvalidRequest(f"malformed PoolID {text!r}: {exc}") from None
        if ip_range is not None and (ip_range.version != subnet.version or not ip_range.subnet_of(subnet)):  # type: ignore[arg-type]
            raise InvalidRequest(f"malformed PoolID {text!r}: the ip-range is not inside the subnet")
        return cls(parts[0], subnet, ip_range)
