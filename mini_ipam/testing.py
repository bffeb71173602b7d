"""Running a real mini-ipam driver from tests and benchmarks: the process, and waiting for things.

The project's tests and its benchmarks both start ``mini-ipam serve`` as a real
process on a socket of their own and poll until it answers; this is the one
place that knows how. It is part of the package so that tooling around the
driver can be tested the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mini_ipam.unix_http import UnixHTTPError, get_json, plugin_answers


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it returns something true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def serve_command(socket: Path, *flags: str) -> list[str]:
    """``mini-ipam serve`` on ``socket``, run by this interpreter (so the environment tested is this one).

    Unless ``flags`` name one, the driver's local record (kept on a shared store) is a file beside the
    socket, never the machine's own ``/var/lib/mini-ipam``.
    """
    record = () if "--local-record" in flags else ("--local-record", f"{socket}.record.json")
    return [sys.executable, "-m", "mini_ipam", "serve", "--socket", str(socket), *record, *flags]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM a process started here, SIGKILL it if it has not exited within ``timeout``; its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
    return process.returncode


class DriverProcess:
    """``python -m mini_ipam serve`` with ``flags`` on ``socket_path``; its output goes to ``log``."""

    def __init__(
        self,
        socket_path: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.flags = flags
        self.env = env
        self.cwd = cwd
        self.log = log or socket_path.parent / f"{socket_path.stem}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        """The command line that starts the driver."""
        return serve_command(self.socket_path, *self.flags)

    @property
    def pid(self) -> int:
        """The process id (the driver must have been started)."""
        assert self.process is not None, "the driver was not started"
        return self.process.pid

    def spawn(self, command: Sequence[str] | None = None) -> None:
        """Start the process (``command``, by default ``self.command``) without waiting for it."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                list(command or self.command),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
            )

    def start(self, wait: bool = True, timeout: float = 15, settled: bool = True) -> DriverProcess:
        """Start the driver; with ``wait``, poll until it answers (AssertionError, with its log, if it exits).

        With ``settled`` too, a driver on a shared map that has just made it (or found it lost) is also
        waited for until the map hands out subnets: until its recovery window has passed.
        """
        self.spawn()
        if wait:
            self.wait_ready(timeout)
            if settled:
                wait_until(self.settled, timeout=timeout, what=f"the map of mini-ipam on {self.socket_path}")
        return self

    def settled(self) -> bool:
        """False while the driver's health check says its shared map recovers (hands out no new subnet)."""
        try:
            status, body = get_json(str(self.socket_path), "/healthz", timeout=5)
        except UnixHTTPError:
            return True  # not this helper's question: whoever calls next will see it
        shared = body.get("map") if isinstance(body, dict) else None
        return not (status == 200 and isinstance(shared, dict) and shared.get("state") != "ready")

    def wait_ready(self, timeout: float = 15, interval: float = 0.01) -> None:
        """Poll the socket until the driver answers ``Plugin.Activate``."""
        wait_until(self.answers, timeout=timeout, interval=interval, what=f"mini-ipam on {self.socket_path}")

    def answers(self) -> bool:
        """Whether the driver answers now; AssertionError, with its log, once it has exited."""
        assert self.process is not None, "the driver was not started"
        if self.process.poll() is not None:
            raise AssertionError(f"mini-ipam exited with {self.process.returncode}:\n{self.log_tail()}")
        return plugin_answers(str(self.socket_path), timeout=1.0)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int, timeout: float = 15) -> int:
        """Send ``signum`` and wait for the process to exit; its exit code."""
        assert self.process is not None, "the driver was not started"
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (the driver removes its socket), SIGKILL after 15 s; then remove a socket left behind."""
        if self.process is not None:
            stop_process(self.process)
        with contextlib.suppress(FileNotFoundError):
            if self.socket_path.is_socket():
                self.socket_path.unlink()

    def log_text(self) -> str:
        """Everything the driver wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, characters: int = 3000) -> str:
        """The end of the driver's log, for failure messages."""
        return self.log_text()[-characters:]


def redis_server_command(binary: str, socket: Path, directory: Path, *extra: str) -> list[str]:
    """A redis-server on the Unix socket ``socket`` only (no TCP port), without persistence unless ``extra`` asks."""
    return [binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(directory), *extra]  # fmt: skip


class RedisProcess:
    """A redis-server (or any server that takes its flags) on a Unix socket in ``directory``, with no TCP port."""

    def __init__(self, directory: Path, *extra: str, binary: str = "redis-server") -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.extra = extra
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The store URL of this server (add ``?prefix=`` to choose a map)."""
        return f"unix://{self.socket}"

    def store_url(self, prefix: str | None = None) -> str:
        """The store URL of this server, for ``--store`` or ``stores.from_url``, with a map ``prefix``."""
        return self.url + (f"?prefix={prefix}" if prefix else "")

    @property
    def pid(self) -> int:
        """The server's process id (it must have been started)."""
        assert self.process is not None, "the server was not started"
        return self.process.pid

    def start(self, timeout: float = 15) -> RedisProcess:
        """Start the server and poll until it answers PING."""
        if self.socket.exists():
            self.socket.unlink()  # left by a killed server
        self.process = subprocess.Popen(
            redis_server_command(self.binary, self.socket, self.directory, *self.extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, timeout=timeout, what=f"{self.binary} to answer")
        return self

    def answers(self) -> bool:
        """Whether the server answers at all (a reply that is an error counts: one wanting a password is up)."""
        import redis

        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"{self.binary} exited with {self.process.returncode} at start-up")
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=0.5)
        try:
            client.ping()
        except (redis.AuthenticationError, redis.ResponseError):
            return True
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()
        return True

    def ping(self) -> bool:
        """Whether the server answers PING with PONG now."""
        import redis

        client = self.client(timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def client(self, timeout: float = 5.0) -> Any:
        """A redis-py client of this server."""
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=timeout)

    def stop(self) -> None:
        """Stop the server by its pid."""
        if self.process is not None:
            stop_process(self.process)
        self.process = None
