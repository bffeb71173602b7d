"""A small HTTP client over Unix sockets: for the driver's own socket and the Docker engine API."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from mini_ipam import protocol


class UnixHTTPError(Exception):
    """The socket could not be reached, or did not answer with JSON."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request_json(socket_path: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """Send one request; return its status and decoded JSON body (None for an empty one)."""
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.strip() else None
    except FileNotFoundError:
        raise UnixHTTPError("is not running (no socket there)") from None
    except ConnectionRefusedError:
        raise UnixHTTPError("is not running (the socket refuses connections)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise UnixHTTPError(f"did not answer: {exc}") from None
    except ValueError as exc:
        raise UnixHTTPError(f"answered something that is not JSON: {exc}") from None
    finally:
        connection.close()


def get_json(socket_path: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``path``."""
    return request_json(socket_path, "GET", path, timeout=timeout)


def plugin_answers(socket_path: str, timeout: float = 2.0) -> bool:
    """Whether a driver answers ``Plugin.Activate`` on ``socket_path`` as an IPAM driver."""
    try:
        status, reply = request_json(socket_path, "POST", protocol.path(protocol.ACTIVATE), timeout=timeout)
    except UnixHTTPError:
        return False
    return status == 200 and isinstance(reply, dict) and reply == protocol.MANIFEST
