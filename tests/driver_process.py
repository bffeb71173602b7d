"""A real ``mini-ipam serve`` process and a tiny HTTP client for its Unix socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from mini_ipam.unix_http import UnixHTTPConnection
from tests.servers import serve_command, wait_until


def call(socket_path: str | Path, method: str, body: Any = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST like the engine does (no Content-Type; an empty body for argument-less calls)."""
    connection = UnixHTTPConnection(str(socket_path), timeout)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        connection.request(
            "POST", f"/{method}", body=data, headers={"Accept": "application/vnd.docker.plugins.v1.2+json"}
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class DriverProcess:
    """``python -m mini_ipam serve`` with the given flags, on ``socket_path``."""

    def __init__(self, socket_path: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.socket_path = socket_path
        self.flags = flags
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log = socket_path.parent / f"{socket_path.stem}.log"

    def start(self, wait: bool = True) -> DriverProcess:
        environment = {**os.environ, **(self.env or {})}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                serve_command(self.socket_path, *self.flags),
                stdout=log,
                stderr=log,
                env=environment,
            )
        if wait:
            wait_until(self.answers, timeout=15, what=f"mini-ipam on {self.socket_path}")
        return self

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"mini-ipam exited with {self.process.returncode}:\n{self.log.read_text()}")
        try:
            return call(self.socket_path, "Plugin.Activate", timeout=1)[0] == 200
        except OSError:
            return False

    def signal(self, signum: int) -> int:
        """Send a signal and wait for the process to exit; return its exit code."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(timeout=15)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.signal(signal.SIGTERM)
