"""The file store's journal codec: events in their JSON text form, and back.

In memory an event names its subnet by a block key and its address by an int
(``stores.memory``); in the journal and the snapshot both are text, written
exactly as Python's ``ipaddress`` writes them, so a state file reads the same
whatever wrote it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from stores.memory import Event, key_of, make_key, split_key


def subnet_text(key: int) -> str:
    """A block key as CIDR text, exactly as ``str()`` of the ipaddress network would write it."""
    version, net, plen = split_key(key)
    if version == 4:
        return f"{socket.inet_ntop(socket.AF_INET, net.to_bytes(4, 'big'))}/{plen}"
    return str(ipaddress.IPv6Network((net, plen)))


def subnet_key(text: str) -> int:
    """The block key of CIDR text; ValueError when it is not a subnet (host bits set included)."""
    address, _, length = text.partition("/")
    if length.isascii() and length.isdigit() and "." in address:
        # The common case without ipaddress objects (start-up replays one per pool).
        try:
            net = int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")
        except OSError:
            pass
        else:
            plen = int(length)
            if plen <= 32 and not net & ((1 << (32 - plen)) - 1):
                return make_key(4, net, plen)
    return key_of(ipaddress.ip_network(text))  # everything else, and its error, as ipaddress says


def address_text(version: int, value: int) -> str:
    """An address int as text, exactly as ``str()`` of the ipaddress address would write it."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return str(ipaddress.IPv6Address(value))


def address_value(version: int, text: str) -> int:
    """An address of the given family as an int; ValueError when ``text`` is not one."""
    if version == 4:
        try:
            return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        except (OSError, TypeError):
            return int(ipaddress.IPv4Address(text))  # raises the ValueError (or TypeError) that explains it
    return int(ipaddress.IPv6Address(text))


def encode_event(event: Event) -> dict[str, Any]:
    """An event in the journal's JSON form: the subnet and the address as text."""
    if "subnet" not in event:
        return event
    key = event["subnet"]
    encoded = dict(event, subnet=subnet_text(key))  # the same keys in the same order
    if "address" in encoded:
        encoded["address"] = address_text(split_key(key)[0], event["address"])
    return encoded


def decode_event(data: Any) -> Event:
    """An event read from a journal or snapshot, in the form ``_apply`` takes.

    Raises KeyError, TypeError or ValueError when it is not one.
    """
    if not isinstance(data, dict):
        raise TypeError(f"an event is a JSON object, not {type(data).__name__}")
    if "subnet" not in data:
        return data
    text = data["subnet"]
    if not isinstance(text, str):
        raise TypeError(f"subnet {text!r} is not text")
    key = subnet_key(text)
    event = dict(data, subnet=key)
    if "address" in event:
        event["address"] = address_value(split_key(key)[0], event["address"])
    return event
