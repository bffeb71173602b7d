"""A TCP address to listen on, as ``HOST:PORT``: the form of ``--metrics-address``.

The host must be an IP address (``127.0.0.1``, ``[::1]``, ``0.0.0.0``, ``[::]``): a host
name can resolve to several addresses, and which interfaces a listener is reachable on
is a decision an operator should see spelled out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class ListenAddress:
    """An IP address and a TCP port."""

    host: str
    port: int

    @property
    def version(self) -> int:
        """4 or 6."""
        return ipaddress.ip_address(self.host).version

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.version == 6 else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://`` and the address."""
        return f"http://{self}"


def listen_address(text: str) -> ListenAddress | None:
    """``HOST:PORT``, ``[IPV6]:PORT`` included, as a ListenAddress; empty means none; ValueError saying why not.

    Empty is "off" so that an environment that lists every setting (a managed
    plugin's, an ``EnvironmentFile``) can leave this one blank.
    """
    value = text.strip()
    if not value:
        return None
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise ValueError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:19464, [::1]:19464, or 0.0.0.0:19464 for every interface)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [{host}]:{port}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{text!r}: {host!r} is not an IP address (a host name may stand for several; name the address)"
        ) from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise ValueError(f"{text!r}: scoped IPv6 addresses are not supported")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: {port!r} is not a TCP port from 1 to 65535")
    return ListenAddress(str(address), int(port))
