"""How the Redis store and its script name blocks and addresses, and read back what the script wrote.

Python and Lua exchange blocks and addresses as *bit strings* (a network's leading
``prefixlen`` bits as ``"0"``/``"1"`` characters), so no 128-bit arithmetic is ever
needed in Lua. The script writes key names and readable fields itself, in the text
Python 3.11's ``ipaddress`` uses; this module only parses them.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Sequence
from typing import Any

from stores.base import Address, Block, CorruptState, Network, PoolInfo, UnknownPool


def bits(network: Network) -> str:
    """The network's leading ``prefixlen`` bits, as the script names tree nodes."""
    if network.prefixlen == 0:
        return ""
    return format(int(network.network_address), f"0{network.max_prefixlen}b")[: network.prefixlen]


def network(family: str | int, bits: str) -> Network:
    """The network a family and bit string name."""
    if str(family) == "4":
        return ipaddress.IPv4Network((int(bits.ljust(32, "0"), 2), len(bits)))
    return ipaddress.IPv6Network((int(bits.ljust(128, "0"), 2), len(bits)))


def rel_bits(subnet: Network, address: Address) -> str:
    """The bits of an address below its subnet's prefix: its node in the pool's tree."""
    if address.version != subnet.version or address not in subnet:
        raise ValueError(f"address {address} is not inside {subnet}")
    return offset_bits(subnet, int(address) - int(subnet.network_address))


def offset_bits(subnet: Network, offset: int) -> str:
    depth = subnet.max_prefixlen - subnet.prefixlen
    return format(offset, f"0{depth}b") if depth else ""


def address(subnet: Network, rel: str) -> Address:
    return subnet.network_address + (int(rel, 2) if rel else 0)


def clamp(subnet: Network, first: Address, last: Address) -> tuple[str, str] | None:
    """``[first, last]`` cut to the subnet, as bit strings; None when nothing is left.

    Cutting changes no result: the tree holds nothing outside the subnet, and a
    cursor can only be the subnet's last address when ``last`` lies beyond it,
    where searching on from it finds nothing either way.
    """
    if first.version != subnet.version or last.version != subnet.version:
        raise ValueError(f"range {first} to {last} is not of the family of {subnet}")
    base = int(subnet.network_address)
    low = max(int(first), base)
    high = min(int(last), int(subnet.broadcast_address))
    if low > high:
        return None
    return offset_bits(subnet, low - base), offset_bits(subnet, high - base)


def text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def parse_network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        raise CorruptState(f"unreadable subnet {text!r} in a key name") from exc


def parse_address(text: str) -> Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError as exc:
        raise CorruptState(f"unreadable address {text!r} in a pool") from exc


def decode(value: bytes | str, what: str) -> dict[str, Any]:
    try:
        decoded = json.loads(value)
    except ValueError as exc:
        raise CorruptState(f"unreadable JSON for {what}: {value!r}") from exc
    if not isinstance(decoded, dict):
        raise CorruptState(f"unreadable JSON for {what}: {value!r}")
    return decoded


def block(subnet: Network, value: bytes | str) -> Block:
    spec = decode(value, f"block {subnet}")
    try:
        return Block(subnet, str(spec["label"]), str(spec["owner"]), float(spec["since"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptState(f"block {subnet} lacks {exc}: {value!r}") from exc


def pool_info(block: Block, scope: str, value: bytes | str) -> PoolInfo:
    spec = decode(value, f"pool {block.subnet} {scope!r}")
    try:
        return PoolInfo(block, scope, str(spec["owner"]), float(spec["since"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptState(f"pool {block.subnet} {scope!r} lacks {exc}: {value!r}") from exc


def dumps(value: dict[str, Any]) -> str:
    """Compact JSON, so the script can find the pool's trailing ``,"cursor":`` member."""
    return json.dumps(value, separators=(",", ":"))


def address_json(note: str = "") -> str:
    record: dict[str, Any] = {"since": time.time()}
    if note:
        record["note"] = note
    return dumps(record)


def known(reply: Sequence[Any], subnet: Network, scope: str) -> str:
    """The reply's status word; raises UnknownPool when the script found no such pool."""
    status = str(reply[0])
    if status == "unknown":
        raise UnknownPool(f"no pool {subnet} in scope {scope!r}")
    return status
