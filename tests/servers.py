"""Real services for tests: a redis-server or valkey-server on a temporary Unix socket.

Outside CI a missing binary skips the tests that need it; with ``CI=true`` it
fails them, so a CI run can never pass by skipping.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from mini_ipam.testing import RedisProcess, redis_server_command, serve_command, wait_until

__all__ = ["RedisServer", "redis_server_command", "require_binary", "serve_command", "unavailable", "wait_until"]


PACKAGES = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "busybox": "busybox-static",
    "promtool": "prometheus",
    "systemd-analyze": "systemd",
    "redis-cli": "redis-tools",
    "valkey-server": "-t bookworm-backports valkey-server",
    "valkey-sentinel": "-t bookworm-backports valkey-sentinel",
    "valkey-cli": "-t bookworm-backports valkey-tools",
}
"""Debian packages of the binaries whose package has another name (Valkey comes from bookworm-backports)."""


def unavailable(message: str) -> NoReturn:
    """The machine lacks something a test needs: skip it locally, fail it in CI (CI=true)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)  # outside CI only: CI never passes by skipping


def require_binary(name: str) -> str:
    """The path of ``name``; skip (or, in CI, fail) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        package = PACKAGES.get(name, name)
        unavailable(f"{name} is not installed (apt-get install {package})")
    return path


BUSY_LOOP = """
local clock = rawget(_G, 'os') and os.clock
local function cpu() return clock and clock() * 1000000 or 0 end
local function wall()
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end
local limit = tonumber(ARGV[1])
local cpu0, wall0 = cpu(), wall()
while cpu() - cpu0 < limit and wall() - wall0 < limit do end
return 1
"""
"""A script that keeps the server busy for ARGV[1] microseconds: a stalled server that still holds connections.

Redis >= 7.2 and Valkey freeze ``TIME`` inside a script (until the script has run
for ``busy-reply-threshold``), so the loop also watches ``os.clock()``, the
server's CPU time, which those servers offer and Redis 7.0 does not. It ends on
whichever clock first says the time is up: never before ARGV[1] µs of wall time,
later only when the machine is short of CPU.
"""


@dataclass(frozen=True)
class ServerFamily:
    """A Redis-compatible server family: Redis or Valkey, with its binaries named ``<name>-server`` etc."""

    name: str

    @property
    def server(self) -> str:
        """The server binary's name (``redis-server``, ``valkey-server``)."""
        return f"{self.name}-server"

    @property
    def cli(self) -> str:
        """The command-line client's name (``redis-cli``, ``valkey-cli``)."""
        return f"{self.name}-cli"

    @property
    def sentinel(self) -> str:
        """The Sentinel binary's name (``redis-sentinel``, ``valkey-sentinel``)."""
        return f"{self.name}-sentinel"

    @property
    def version(self) -> str | None:
        """The installed server's version (``7.0.15``), or None when it is not installed."""
        return _installed_version(self.server)

    @property
    def id(self) -> str:
        """The test id: name and major.minor version (``redis-7.0``), or the bare name when not installed."""
        version = self.version
        return f"{self.name}-{'.'.join(version.split('.')[:2])}" if version else self.name

    def require(self, binary: str | None = None) -> str:
        """The path of one of the family's binaries (default: the server); skip, or in CI fail, when absent."""
        return require_binary(binary or self.server)

    def __str__(self) -> str:
        return self.id


REDIS = ServerFamily("redis")
"""redis-server, from bookworm (7.0)."""

VALKEY = ServerFamily("valkey")
"""valkey-server, from bookworm-backports (8.0)."""

FAMILIES = (REDIS, VALKEY)
"""Every server family the Redis tier runs against."""


@functools.cache
def _installed_version(binary: str) -> str | None:
    path = shutil.which(binary)
    if path is None:
        return None
    output = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    match = re.search(r"v=(\d+\.\d+\.\d+)", output)
    return match[1] if match else None


_family_under_test = REDIS


def family_under_test() -> ServerFamily:
    """The server family the running test is about (set per test by conftest); Redis outside the Redis tier."""
    return _family_under_test


@contextmanager
def testing_family(family: ServerFamily) -> Iterator[None]:
    """Make ``family`` the family under test (what ``RedisServer`` starts by default) for a while."""
    global _family_under_test
    previous, _family_under_test = _family_under_test, family
    try:
        yield
    finally:
        _family_under_test = previous


class RedisServer(RedisProcess):
    """A server of one family on a Unix socket in ``directory``, with no TCP port (``mini_ipam.testing.RedisProcess``).

    ``family`` defaults to the family under test (see ``family_under_test``);
    ``options`` are server options added to (and overriding) the defaults,
    e.g. ``("--appendonly", "yes")``. Subclasses may set ``options`` instead.
    A missing binary skips the test locally and fails it in CI.
    """

    options: tuple[str, ...] = ()

    def __init__(self, directory: Path, family: ServerFamily | None = None, options: Sequence[str] = ()) -> None:
        self.family = family or family_under_test()
        super().__init__(directory, *self.options, *options, binary=self.family.server)

    def start(self, timeout: float = 15) -> RedisServer:
        self.binary = self.family.require()
        super().start(timeout)
        return self


class SessionServers:
    """One server of each family under ``root``, each started the first time a test asks for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._running: dict[ServerFamily, RedisServer] = {}

    def get(self, family: ServerFamily) -> RedisServer:
        """The family's shared server (skipped locally, failed in CI, when the family is not installed)."""
        if family not in self._running:
            directory = self.root / family.name
            directory.mkdir(exist_ok=True)
            server = RedisServer(directory, family)
            server.start()
            self._running[family] = server
        return self._running[family]

    def stop(self) -> None:
        """Stop every server started here."""
        for server in self._running.values():
            server.stop()
        self._running.clear()


def family_params() -> list[Any]:
    """One ``pytest.param`` per server family, marked ``redis`` and named by the family's id, to parametrize with."""
    return [pytest.param(family, id=family.id, marks=pytest.mark.redis) for family in FAMILIES]


def family_variants(values: Iterable[str], real: str = "redis") -> list[Any]:
    """``pytest.param(value, family)`` pairs: each value once with no family, ``real`` once per server family.

    Each ``real`` pair is marked ``redis`` and named by the family's id
    (``redis-7.0``, ``valkey-8.0``); the others by their value.
    """
    params = []
    for value in values:
        if value == real:
            params += [pytest.param(value, family, id=family.id, marks=pytest.mark.redis) for family in FAMILIES]
        else:
            params.append(pytest.param(value, None, id=value))
    return params


def over_families(argname: str, values: Iterable[str], real: str = "redis") -> pytest.MarkDecorator:
    """Parametrize ``argname`` over ``values`` as ``family_variants`` does, setting ``redis_family`` to match.

    So a test whose value ``real`` asks for the ``redis_server`` fixture gets a
    server of each family in turn.
    """
    return pytest.mark.parametrize((argname, "redis_family"), family_variants(values, real), indirect=["redis_family"])
