"""One server process on loopback: a data node (redis-server, valkey-server) or a sentinel.

A node lives in its own directory, with a config file written there (Sentinel
and CONFIG REWRITE need one), its log, its data and, optionally, a Unix socket.
It listens on 127.0.0.1 on a TCP port picked free at start-up; a restart keeps
the directory, the config and the port. Every process is stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from tests.servers import ServerFamily, wait_until

HOST = "127.0.0.1"

START_TIMEOUT = 20.0
"""Seconds a node may take to answer after being started (loading its data included)."""

_PORT_ATTEMPTS = 5


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (it may be taken before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Node:
    """A server process of ``family`` in ``directory``: a data node, or a sentinel when ``sentinel`` is set.

    ``settings`` are config-file lines added after the node's own ones (port,
    bind, dir, log, no persistence); ``unix_socket`` also opens a socket at
    ``directory / "s.sock"``. ``extra_ports`` names further settings that need a
    free port of their own (``cluster-port``); they are picked with the main
    port and kept across restarts. ``password`` is the default user's
    (``requirepass``): the node's own clients authenticate with it.
    """

    def __init__(
        self,
        family: ServerFamily,
        directory: Path,
        *,
        sentinel: bool = False,
        settings: Sequence[str] = (),
        unix_socket: bool = False,
        extra_ports: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.family = family
        self.password = password
        self.directory = directory
        self.sentinel = sentinel
        self.settings = list(settings)
        self.socket = directory / "s.sock" if unix_socket else None
        self.extra_ports = {name: 0 for name in extra_ports}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    # -- where it is ------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of its TCP listener."""
        return HOST, self.port

    @property
    def name(self) -> str:
        """``host:port``, as servers, sentinels and cluster tools write a node's address."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """A ``redis://`` URL of its TCP port (database 0)."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """A ``unix://`` URL of its socket."""
        if self.socket is None:
            raise ValueError(f"{self} has no Unix socket")
        return f"unix://{self.socket}"

    @property
    def config_file(self) -> Path:
        return self.directory / ("sentinel.conf" if self.sentinel else "node.conf")

    @property
    def log(self) -> Path:
        return self.directory / "node.log"

    @property
    def pid(self) -> int | None:
        """The pid of the running process, or None."""
        process = self.process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __repr__(self) -> str:
        kind = self.family.sentinel if self.sentinel else self.family.server
        return f"<{kind} {self.name} pid={self.process.pid if self.process else None}>"

    # -- clients ------------------------------------------------------------------

    def client(self, **options: Any) -> redis.Redis:
        """A plain redis-py client of its TCP port (5 s timeouts, no retries, the node's password, unless
        ``options`` say otherwise)."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        settings: dict[str, Any] = {
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "retry": Retry(NoBackoff(), 0),
            "password": self.password,
        }
        settings.update(options)
        return redis.Redis(HOST, self.port, **settings)

    def call(self, *command: Any, timeout: float = 5) -> Any:
        """Run one command on a fresh RESP2 connection and close it: the server's reply as is, decoded to text."""
        client = self.client(socket_timeout=timeout, decode_responses=True, protocol=2)
        client.response_callbacks.clear()  # the reply as the server wrote it, not redis-py's reading of it
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def info(self, section: str) -> dict[str, Any]:
        """``INFO section`` as a dict."""
        client = self.client(decode_responses=True)
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def role(self) -> str:
        """``master``, ``slave`` or ``sentinel``, from ROLE."""
        return str(self.call("ROLE")[0])

    # -- life -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the node and wait until it answers PING with its data loaded.

        The first start picks free ports, and picks again when the server cannot
        bind them (another process took one in between); later starts reuse them.
        """
        first = self.port == 0
        for attempt in range(_PORT_ATTEMPTS if first else 1):
            if first:
                self.port = free_port()
                self.extra_ports = {name: free_port() for name in self.extra_ports}
                self._write_config()
            try:
                self._launch()
                return
            except _ExitedAtStart as exc:
                if not first or attempt == _PORT_ATTEMPTS - 1 or "Address already in use" not in str(exc):
                    raise AssertionError(str(exc)) from None

    def restart(self) -> None:
        """Start the node again after a stop or a kill: same directory, config, data and port."""
        if self.running:
            raise AssertionError(f"{self} is still running")
        self._launch()

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s); a paused one is resumed first."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a stopped process would ignore SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """kill -9: the process dies at once, without saving anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: the process holds its connections but answers nothing."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def answers(self) -> bool:
        """Whether it answers PING now, with its data loaded (for a sentinel: PING alone)."""
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            raise _ExitedAtStart(f"{self} exited with {code}: {self.tail()}")
        client = self.client(socket_timeout=1, socket_connect_timeout=1, decode_responses=True)
        try:
            if not client.ping():
                return False
            return self.sentinel or str(client.info("persistence").get("loading")) == "0"
        except (redis.RedisError, OSError):
            return False  # not listening yet, or still loading (-LOADING)
        finally:
            client.close()

    def tail(self, lines: int = 15) -> str:
        """The end of the node's log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- inside ---------------------------------------------------------------------

    def _write_config(self) -> None:
        lines = [f"port {self.port}", f"bind {HOST}", f"dir {self.directory}", f"logfile {self.log}"]
        if not self.sentinel:
            lines += ['save ""', "appendonly no"]
            if self.socket is not None:
                lines += [f"unixsocket {self.socket}", "unixsocketperm 700"]
        lines += [f"{name} {port}" for name, port in self.extra_ports.items()]
        if self.password is not None:
            lines.append(f"requirepass {self.password}")
        lines += self.settings
        self.config_file.write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        binary = self.family.require(self.family.sentinel if self.sentinel else self.family.server)
        if self.socket is not None and self.socket.exists():
            self.socket.unlink()  # left by a killed server: it must not pass for a live one
        started = time.monotonic()
        self.process = subprocess.Popen(
            [binary, str(self.config_file)],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(self.answers, timeout=START_TIMEOUT, interval=0.02, what=f"{self} to answer")
        except _ExitedAtStart:
            self.process = None
            raise
        except AssertionError:
            self.kill()
            took = time.monotonic() - started
            raise AssertionError(f"{self} did not answer within {took:.1f}s: {self.tail()}") from None


class _ExitedAtStart(AssertionError):
    """The process ended before it answered."""
