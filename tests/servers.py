"""Real services for tests: a redis-server on a temporary Unix socket.

Outside CI a missing binary skips the tests that need it; with ``CI=true`` it
fails them, so a CI run can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    import redis


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


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it returns truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


BUSY_LOOP = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
while true do
  local n = redis.call('TIME')
  if n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]) then return 1 end
end
"""
"""A script that keeps Redis busy for ARGV[1] microseconds: a stalled server that still holds connections."""


def redis_server_command(binary: str, socket: Path, directory: Path) -> list[str]:
    """A redis-server on the Unix socket ``socket`` only (no TCP port), without persistence."""
    return [binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(directory)]  # fmt: skip


def serve_command(socket: Path, *flags: str) -> list[str]:
    """``mini-ipam serve`` on ``socket``, run by this interpreter (so CI's environment is the one tested)."""
    return [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(socket), *flags]


class RedisServer:
    """A redis-server process on a Unix socket in ``directory``, with no TCP port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        binary = require_binary("redis-server")
        self.process = subprocess.Popen(
            redis_server_command(binary, self.socket, self.directory),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, what="redis-server to answer PING")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def client(self) -> redis.Redis:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
