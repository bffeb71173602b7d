"""A real ``mini-ipam serve`` process (``mini_ipam.testing.DriverProcess``) and an engine-like client for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mini_ipam import protocol
from mini_ipam.testing import DriverProcess
from mini_ipam.unix_http import UnixHTTPConnection

__all__ = ["DriverProcess", "call"]


def call(socket_path: str | Path, method: str, body: Any = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST like the engine does (no Content-Type; an empty body for argument-less calls)."""
    connection = UnixHTTPConnection(str(socket_path), timeout)
    try:
        data = b"" if body is None else json.dumps(body).encode()
        connection.request("POST", f"/{method}", body=data, headers={"Accept": protocol.ACCEPT})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()
