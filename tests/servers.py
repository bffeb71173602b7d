"""Real services for tests: a redis-server on a temporary Unix socket.

Outside CI a missing binary skips the tests that need it; with ``CI=true`` it
fails them, so a CI run can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, NoReturn

import pytest

from mini_ipam.testing import RedisProcess, redis_server_command, serve_command, wait_until

__all__ = ["RedisServer", "redis_server_command", "require_binary", "serve_command", "unavailable", "wait_until"]

if TYPE_CHECKING:
    pass


PACKAGES = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "busybox": "busybox-static",
    "promtool": "prometheus",
    "systemd-analyze": "systemd",
}
"""Debian packages of the binaries whose package has another name."""


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
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
while true do
  local n = redis.call('TIME')
  if n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]) then return 1 end
end
"""
"""A script that keeps Redis busy for ARGV[1] microseconds: a stalled server that still holds connections."""


class RedisServer(RedisProcess):
    """A redis-server on a Unix socket in ``directory``, with no TCP port; missing, it skips (fails in CI)."""

    def start(self, timeout: float = 15) -> RedisServer:
        self.binary = require_binary("redis-server")
        super().start(timeout)
        return self
