"""How the text of a setting becomes its value: one parser per kind of value, each saying what is allowed.

A parser takes the text exactly as given (one flag's argument, or one item of a
comma-separated environment variable) and returns the value, or raises
``Invalid`` with a phrase about the text that ends by saying what is allowed, such
as ``'0' is not a whole number from 1 to 256``. ``mini_ipam.commands.flags`` adds
which setting it was and where it came from.
"""

from __future__ import annotations

import grp
import ipaddress
import math
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

import stores
from mini_ipam.listen_address import ListenAddress, listen_address
from stores import redact_url

Parser = Callable[[str], Any]


class Invalid(ValueError):
    """The text is not a value of this setting; the message says why and what is allowed."""


DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s|m|h|d)?", re.IGNORECASE)
EXAMPLES = (("500ms", 0.5), ("5s", 5.0), ("10m", 600.0), ("1h", 3600.0))
UNIX_PATH_MAX = 107
"""The longest path a Unix socket can be bound to (sun_path holds 108 bytes, the last one NUL)."""


def show_duration(seconds: float) -> str:
    """A duration as the shortest text ``duration`` reads back: ``500ms``, ``5s``, ``10m``, ``1h``, ``1d``."""
    if seconds == 0:
        return "0"
    for unit in ("d", "h", "m", "s"):
        size = DURATION_UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds * 1000:g}ms"


def duration(least: float, most: float, *, least_included: bool = True) -> Parser:
    """A duration such as ``500ms``, ``5s``, ``10m`` or ``1h`` (a bare number is seconds), in a range."""
    examples = [text for text, seconds in EXAMPLES if least < seconds <= most][:3]
    lower = f"from {show_duration(least)} to" if least_included else f"more than {show_duration(least)} and at most"
    allowed = f"a duration such as {' or '.join(examples)}, {lower} {show_duration(most)} (a bare number is seconds)"

    def parse(text: str) -> float:
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise Invalid(f"{text!r} is not {allowed}")
        seconds = float(match["number"]) * DURATION_UNITS[(match["unit"] or "s").lower()]
        too_short = seconds < least if least_included else seconds <= least
        if not math.isfinite(seconds) or too_short or seconds > most:
            raise Invalid(f"{text!r} is not {allowed}")
        return seconds

    return parse


def whole_number(least: int, most: int | None = None, what: str = "a whole number") -> Parser:
    """A whole number in a range (``most`` None: no upper bound)."""
    allowed = f"{what} from {least} to {most}" if most is not None else f"{what} from {least} up"

    def parse(text: str) -> int:
        value = text.strip()
        if not (value.isascii() and value.isdigit()) or int(value) < least or (most is not None and int(value) > most):
            raise Invalid(f"{text!r} is not {allowed}")
        return int(value)

    return parse


def prefix_length(longest: int) -> Parser:
    """A prefix length such as ``28`` or ``/28``, from 1 to ``longest``."""

    def parse(text: str) -> int:
        value = text.strip().removeprefix("/")
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= longest:
            raise Invalid(f"{text!r} is not a prefix length from 1 to {longest} (such as 28 or /28)")
        return int(value)

    return parse


def subnet(version: int, longest: int) -> Parser:
    """An IPv``version`` subnet in CIDR form, at most /``longest`` (a parent must hold at least one subnet)."""

    def parse(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            network = ipaddress.ip_network(text.strip())
        except ValueError as exc:
            raise Invalid(f"{text!r} is not an IPv{version} subnet in CIDR form ({exc})") from None
        if network.version != version:
            raise Invalid(f"{text!r} is not an IPv{version} subnet in CIDR form")
        if network.prefixlen > longest:
            raise Invalid(f"{text!r} is too small to carve from: an IPv{version} parent is at most a /{longest}")
        return network

    return parse


def any_subnet(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4 or IPv6 subnet in CIDR form."""
    try:
        return ipaddress.ip_network(text.strip())
    except ValueError as exc:
        raise Invalid(f"{text!r} is not a subnet in CIDR form ({exc})") from None


def choice(options: Sequence[str]) -> Parser:
    """One of ``options``, case-insensitive."""
    allowed = ", ".join(options[:-1]) + f" or {options[-1]}"

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise Invalid(f"{text!r} is not one of {allowed}")
        return value

    return parse


def store_url(text: str) -> str:
    """A store URL its backend can use, as far as can be told without opening it (its password never shown)."""
    value = text.strip()
    try:
        stores.check_url(value)
    except stores.ConfigurationError as exc:
        raise Invalid(f"{redact_url(value)!r} is not a store URL that can be used: {exc}") from None
    return value


def socket_path(text: str) -> str:
    """A path a Unix socket can be bound to."""
    value = text.strip()
    if not value or value.endswith("/"):
        raise Invalid(f"{text!r} is not a socket path such as /run/docker/plugins/mini.sock")
    if "\0" in value or len(value.encode()) > UNIX_PATH_MAX:
        raise Invalid(f"{text!r} is not a usable socket path: a Unix socket's path is at most {UNIX_PATH_MAX} bytes")
    return value


def group(text: str) -> str:
    """A group that exists, by name or number."""
    value = text.strip()
    if value.isascii() and value.isdigit():
        return value  # a number needs no name
    try:
        grp.getgrnam(value)
    except KeyError:
        raise Invalid(f"{text!r} is not a group of this host (a name in /etc/group, or a number)") from None
    return value


def host_id(text: str) -> str:
    """This host's name in the store; empty means the hostname."""
    value = text.strip()
    if not value:
        return socket.gethostname()
    if len(value) > 253 or not value.isprintable() or any(c.isspace() for c in value):
        raise Invalid(f"{text!r} is not a host id: at most 253 printable characters without spaces")
    return value


def name(what: str) -> Parser:
    """A non-empty word without spaces."""

    def parse(text: str) -> str:
        value = text.strip()
        if not value or not value.isprintable() or any(c.isspace() for c in value):
            raise Invalid(f"{text!r} is not {what}: a name without spaces")
        return value

    return parse


def engine_url(text: str) -> str:
    """The Docker engine API, as ``unix:///path/docker.sock``."""
    value = text.strip()
    if not value.startswith("unix:///") or len(value) == len("unix:///"):
        raise Invalid(f"{text!r} is not an engine API URL: it must be unix:///path/docker.sock")
    return value


def listen(text: str) -> ListenAddress | None:
    """``HOST:PORT`` to listen on over TCP; empty means none."""
    try:
        return listen_address(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def file_path(text: str) -> str | None:
    """A file's absolute path (a service's working directory is no place to look for it); empty for none."""
    if not text.strip():
        return None
    if not text.startswith("/") or "\0" in text:
        raise Invalid(f"{text!r} is not an absolute file path such as /var/lib/mini-ipam/record.json (or empty: none)")
    return text
