"""Redis store URLs: what they may say, how they are checked, and how the server is named in messages.

Every option is checked here, before any connection is made: redis-py would pass
unknown names on and fail only at the first connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from stores.base import ConfigurationError, redact_url

DEFAULT_PREFIX = "mini-ipam"

# A prefix becomes part of every key name and of SCAN patterns: keep it to
# characters that are neither hash-tag braces nor glob syntax.
_PREFIX_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Query options a URL may carry besides ``prefix``; everything else is refused,
# because redis-py would pass unknown names on and fail only at the first connect.
_TLS_OPTIONS = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)
_CERT_REQS = frozenset({"none", "optional", "required"})
_BOOLEANS = frozenset({"true", "false", "yes", "no", "1", "0"})


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s)?")


@dataclass(frozen=True)
class Durability:
    """When a change counts as acknowledged: ``?wait_replicas=N``, ``?wait_aof=N``, ``?wait_timeout=D``.

    ``wait_replicas``: WAIT N, so that N replicas have the change (a failover to one
    of them loses nothing acknowledged). ``wait_aof``: WAITAOF 1 N (Redis >= 7.2,
    Valkey >= 8), so that the server's own append-only file and N replicas' have
    fsynced it (a restart loses nothing acknowledged). ``wait_timeout`` bounds the
    wait (default 1 s); a change that falls short in time is undone and refused.
    """

    replicas: int | None = None
    aof_replicas: int | None = None
    timeout_ms: int = 1000

    @property
    def wanted(self) -> bool:
        """Whether any wait is asked for."""
        return self.replicas is not None or self.aof_replicas is not None

    def commands(self) -> list[tuple[Any, ...]]:
        """The commands to send right after a change, on the same connection."""
        found: list[tuple[Any, ...]] = []
        if self.replicas is not None:
            found.append(("WAIT", self.replicas, self.timeout_ms))
        if self.aof_replicas is not None:
            found.append(("WAITAOF", 1, self.aof_replicas, self.timeout_ms))
        return found

    def shortfall(self, replies: list[Any]) -> str | None:
        """What the replies to ``commands()`` fell short of, or None when the change is durable."""
        replies = list(replies)
        if any(reply is None for reply in replies):
            return "the server refused to wait"
        if self.replicas is not None:
            got = int(replies.pop(0))
            if got < self.replicas:
                return f"WAIT {self.replicas} {self.timeout_ms}: {got} replicas acknowledged it"
        if self.aof_replicas is not None:
            local, replicas = (int(value) for value in replies.pop(0))
            if local < 1 or replicas < self.aof_replicas:
                return (
                    f"WAITAOF 1 {self.aof_replicas} {self.timeout_ms}: fsynced {'here' if local else 'not here'}, "
                    f"by {replicas} replicas"
                )
        return None


def _durability(options: dict[str, str], shown: str) -> Durability:
    """The wait_* options, removed from ``options``."""
    values: dict[str, int] = {}
    for name in ("wait_replicas", "wait_aof"):
        if name in options:
            text = options.pop(name)
            if not text.isdigit() or int(text) > 64:
                raise ConfigurationError(
                    f"{name} must be a number of replicas from 0 to 64, not {text!r}, in {shown!r}"
                )
            values[name] = int(text)
    timeout_ms = 1000
    if "wait_timeout" in options:
        text = options.pop("wait_timeout")
        match = _DURATION.fullmatch(text)
        if match is None:
            raise ConfigurationError(f"wait_timeout must be a duration such as 100ms or 1s, not {text!r}, in {shown!r}")
        timeout_ms = round(float(match[1]) * (1 if match[2] == "ms" else 1000))
        if not values:
            raise ConfigurationError(f"wait_timeout needs wait_replicas or wait_aof, in {shown!r}")
        if timeout_ms < 1:
            raise ConfigurationError(f"wait_timeout must be at least 1ms, in {shown!r}")
    return Durability(values.get("wait_replicas"), values.get("wait_aof"), timeout_ms)


def check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ConfigurationError(f"key prefix {prefix!r} is not usable: use 1 to 64 letters, digits, '.', '_' or '-'")


def split_url(url: str) -> tuple[str, str, Durability]:
    """Check a store URL; return the URL for redis-py (without our own options), the prefix and the durability."""
    shown = redact_url(url)
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL {shown!r}: {exc}") from None
    if parts.fragment:
        raise ConfigurationError(f"store URL {shown!r} must not have a #fragment")
    options: dict[str, str] = {}
    for name, value in query:
        if name in options:
            raise ConfigurationError(f"option {name!r} is given twice in {shown!r}")
        options[name] = value
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    check_prefix(prefix)
    durability = _durability(options, shown)
    check_options(parts.scheme, options, shown)
    check_location(parts.scheme, parts.hostname, parts.path, "db" in options, shown)
    # Rebuilt by hand: urlunsplit drops the "//" of unix:///path.
    query_text = f"?{urlencode(options)}" if options else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{query_text}", prefix, durability


def where(client_url: str) -> str:
    """How messages name the server: the URL without its password and TLS options."""
    parts = urlsplit(client_url)
    db = dict(parse_qsl(parts.query)).get("db")
    return redact_url(f"{parts.scheme}://{parts.netloc}{parts.path}") + (f"?db={db}" if db else "")


def check_options(scheme: str, options: dict[str, str], shown: str) -> None:
    allowed = {"db"} | (_TLS_OPTIONS if scheme == "rediss" else set())
    for name, value in options.items():
        if name not in allowed:
            hint = " (TLS options need rediss://)" if name in _TLS_OPTIONS else ""
            raise ConfigurationError(
                f"unknown option {name!r} in {shown!r}{hint}: {scheme}:// URLs take prefix, wait_replicas, wait_aof, "
                "wait_timeout, " + ", ".join(sorted(allowed))
            )
        if name == "db" and not value.isdigit():
            raise ConfigurationError(f"db must be a number, not {value!r}, in {shown!r}")
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise ConfigurationError(f"ssl_cert_reqs must be none, optional or required, not {value!r}, in {shown!r}")
        if name == "ssl_check_hostname" and value.lower() not in _BOOLEANS:
            raise ConfigurationError(f"ssl_check_hostname must be true or false, not {value!r}, in {shown!r}")
        if name in _TLS_OPTIONS and not value:
            raise ConfigurationError(f"option {name!r} is empty in {shown!r}")


def check_location(scheme: str, host: str | None, path: str, db_option: bool, shown: str) -> None:
    if scheme == "unix":
        if host or not path.startswith("/"):
            raise ConfigurationError(f"{shown!r} must name an absolute socket path: unix:///path/redis.sock?db=N")
        return
    db = path.lstrip("/")
    if db and not db.isdigit():
        raise ConfigurationError(f"the database in {shown!r} must be a number: redis://host:port/db")
    if db and db_option:
        raise ConfigurationError(f"{shown!r} names the database twice (path and ?db=)")


def describe(kwargs: dict[str, Any]) -> str:
    """A credential-free name for the server a client talks to."""
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"
