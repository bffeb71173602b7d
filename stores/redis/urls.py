"""Redis store URLs: what they may say, how they are checked, and how the server is named in messages.

Every option is checked here, before any connection is made: redis-py would pass
unknown names on and fail only at the first connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

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
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL {shown!r}: {exc}") from None
    options = _query_options(parts.query, shown)
    if parts.fragment:
        raise ConfigurationError(f"store URL {shown!r} must not have a #fragment")
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


# -- Sentinel and Cluster: URLs that name several servers -------------------------------

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379}
_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_SENTINEL_AUTH = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True)
class Seeds:
    """A checked ``redis+sentinel://`` or ``redis+cluster://`` URL (``rediss+...`` for TLS).

    ``hosts`` are the sentinels (Sentinel) or the seed nodes (Cluster): any one
    that answers is enough. ``username`` and ``password`` are the data nodes'
    credentials; a Sentinel's own, when it wants any, are ``sentinel_username``
    and ``sentinel_password`` (query options). ``tls`` holds the ``ssl_*``
    options, applied to the data nodes and to the sentinels alike.
    """

    kind: str  # "sentinel" or "cluster"
    hosts: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    tls: tuple[tuple[str, str], ...] = ()

    @property
    def where(self) -> str:
        """How messages name the deployment: its scheme, hosts, service and database, without credentials."""
        scheme = ("rediss+" if self.ssl else "redis+") + self.kind
        hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self.hosts)
        path = f"/{self.service}" + (f"/{self.db}" if self.db else "") if self.kind == "sentinel" else ""
        return f"{scheme}://{hosts}{path}"


def is_seeds_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel or Cluster deployment."""
    return urlsplit(url).scheme in SENTINEL_SCHEMES + CLUSTER_SCHEMES


def split_seeds_url(url: str) -> tuple[Seeds, str, Durability]:
    """Check a ``redis+sentinel://`` or ``redis+cluster://`` URL; return what it names, the prefix and the durability.

    ``redis+sentinel://[user:pass@]host1:26379[,host2:26379...]/SERVICE[/DB]`` and
    ``redis+cluster://[user:pass@]host1:port[,host2:port...]``; both take
    ``prefix``, ``wait_replicas``, ``wait_aof``, ``wait_timeout``, the Sentinel form
    ``sentinel_username`` and ``sentinel_password``, the ``rediss+`` forms the ``ssl_*`` options.
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    kind = "sentinel" if parts.scheme in SENTINEL_SCHEMES else "cluster"
    if parts.fragment:
        raise ConfigurationError(f"store URL {shown!r} must not have a #fragment")
    options = _query_options(parts.query, shown)
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    check_prefix(prefix)
    durability = _durability(options, shown)
    ssl = parts.scheme.startswith("rediss")
    allowed = (_SENTINEL_AUTH if kind == "sentinel" else set()) | (_TLS_OPTIONS if ssl else set())
    for name in options:
        if name not in allowed:
            hint = f" (TLS options need rediss+{kind}://)" if name in _TLS_OPTIONS else ""
            if name == "db":
                hint = " (name the database in the path: /SERVICE/DB)" if kind == "sentinel" else " (a cluster has one)"
            raise ConfigurationError(
                f"unknown option {name!r} in {shown!r}{hint}: {parts.scheme}:// URLs take prefix, wait_replicas, "
                "wait_aof, wait_timeout" + "".join(f", {option}" for option in sorted(allowed))
            )
    check_options("rediss" if ssl else "redis", {k: v for k, v in options.items() if k in _TLS_OPTIONS}, shown)
    for name in _SENTINEL_AUTH & options.keys():
        if not options[name]:
            raise ConfigurationError(f"option {name!r} is empty in {shown!r}")
    userinfo, at, location = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = _hosts(location, _DEFAULT_PORTS[kind], shown)
    service, db = "", 0
    segments = [segment for segment in parts.path.split("/")][1:] if parts.path else []
    if kind == "sentinel":
        if not segments or not segments[0]:
            raise ConfigurationError(
                f"{shown!r} must name the service the sentinels watch: redis+sentinel://host:26379/SERVICE[/DB]"
            )
        service = unquote(segments[0])
        if not _SERVICE_RE.fullmatch(service):
            raise ConfigurationError(f"the service name {service!r} in {shown!r} is not usable")
        rest = segments[1:]
        if rest and rest != [""]:
            if len(rest) > 1 and rest[1:] != [""] or not rest[0].isdigit():
                raise ConfigurationError(f"the database in {shown!r} must be a number: .../SERVICE/DB")
            db = int(rest[0])
    elif [segment for segment in segments if segment] not in ([], ["0"]):
        raise ConfigurationError(
            f"{shown!r} names a database or path, and a Redis Cluster has only database 0: "
            "redis+cluster://host1:port,host2:port"
        )
    seeds = Seeds(
        kind,
        hosts,
        service,
        db,
        username,
        password,
        options.get("sentinel_username"),
        options.get("sentinel_password"),
        ssl,
        tuple((name, value) for name, value in sorted(options.items()) if name in _TLS_OPTIONS),
    )
    return seeds, prefix, durability


def _hosts(location: str, default_port: int, shown: str) -> tuple[tuple[str, int], ...]:
    """``host[:port]`` items separated by commas (IPv6 hosts in brackets)."""
    found: list[tuple[str, int]] = []
    for item in location.split(","):
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ConfigurationError(f"malformed host {item!r} in {shown!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ConfigurationError(f"{shown!r} has an empty host: give host1:port,host2:port")
        if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
            raise ConfigurationError(f"the port {port_text!r} in {shown!r} is not a port number")
        address = (host, int(port_text) if port_text else default_port)
        if address in found:
            raise ConfigurationError(f"{host}:{address[1]} is named twice in {shown!r}")
        found.append(address)
    return tuple(found)


def _query_options(query: str, shown: str) -> dict[str, str]:
    """A store URL's query as options, each given at most once (``shown``: the URL as errors quote it)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigurationError(f"malformed store URL {shown!r}: {exc}") from None
    options: dict[str, str] = {}
    for name, value in pairs:
        if name in options:
            raise ConfigurationError(f"option {name!r} is given twice in {shown!r}")
        options[name] = value
    return options
