"""A raw-socket HTTP/1.1 keep-alive client for the driver's Unix socket, and the request pairs benchmarks repeat."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from mini_ipam import protocol


class _Stale(ConnectionError):
    """The connection was closed before any byte of the reply: the request was never handled."""


class UnixClient:
    """A minimal HTTP/1.1 client over one keep-alive Unix-socket connection.

    It builds each request with one format call, sends it with one ``sendall`` and reads the reply
    with as few ``recv`` calls as the reply needs: a few microseconds of Python per call, where
    ``http.client`` spends tens. POST only, as the plugin protocol is.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._buffer = b""
        return sock

    def post(self, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """POST ``body`` to ``path`` (such as ``/IpamDriver.RequestPool``); return the status and reply body."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {protocol.ACCEPT}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return self._exchange(head.encode() + body)

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """Any method, a JSON body (or none); the reply's JSON (or None). For the Docker Engine API."""
        body = b"" if payload is None else json.dumps(payload).encode()
        kind = "Content-Type: application/json\r\n" if payload is not None else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\n{kind}Content-Length: {len(body)}\r\n\r\n"
        status, data = self._exchange(head.encode() + body)
        return status, json.loads(data) if data.strip() else None

    def _exchange(self, message: bytes) -> tuple[int, bytes]:
        """Send one request and read its reply.

        A kept-alive connection the server closed while it was idle (waitress's channel timeout) fails
        before any byte of a reply arrives, so the server never saw the request: it is sent again, once,
        on a new connection.
        """
        reused = self._sock is not None
        sock = self._sock or self._connect()
        try:
            sock.sendall(message)
            return self._read_reply(sock)
        except (_Stale, BrokenPipeError, ConnectionResetError):
            self.close()
            if not reused:
                raise
        except OSError:
            self.close()
            raise
        sock = self._connect()
        try:
            sock.sendall(message)
            return self._read_reply(sock)
        except OSError:
            self.close()
            raise

    def _read_reply(self, sock: socket.socket) -> tuple[int, bytes]:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise (
                    _Stale("the server closed the connection before replying")
                    if not buffer
                    else ConnectionError("the server closed the connection mid-reply")
                )
            buffer += chunk
        head = buffer[:end].decode("latin-1")
        status = int(head[9:12])
        length = 0
        close = chunked = False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            name, value = name.lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                close = True
            elif name == "transfer-encoding" and value == "chunked":
                chunked = True
        buffer = buffer[end + 4 :]
        if chunked:
            body, buffer = self._read_chunks(sock, buffer)
        else:
            while len(buffer) < length:
                buffer += self._receive(sock)
            body, buffer = buffer[:length], buffer[length:]
        self._buffer = buffer
        if close:
            self.close()
        return status, body

    def _read_chunks(self, sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes]:
        body = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += self._receive(sock)
            size_line, buffer = buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buffer) < size + 2:
                buffer += self._receive(sock)
            body, buffer = body + buffer[:size], buffer[size + 2 :]
            if size == 0:
                return body, buffer

    @staticmethod
    def _receive(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def call(self, method: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """POST a protocol call (``Plugin.Activate``, ``IpamDriver.RequestPool`` ...); return status and JSON."""
        status, data = self.post(f"/{method}", b"" if body is None else json.dumps(body).encode())
        return status, json.loads(data) if data else {}

    def ok(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Like ``call``, but a non-200 reply raises RuntimeError with the driver's message."""
        status, reply = self.call(method, body)
        if status != 200:
            raise RuntimeError(f"{method} {body} -> {status} {reply}")
        return reply

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def __enter__(self) -> UnixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answers(path: str | Path) -> bool:
    """Whether something answers ``Plugin.Activate`` with 200 on the socket ``path`` (a new connection): a
    driver, or one of the bare servers the framework floor compares it with."""
    client = UnixClient(path, timeout=2.0)
    try:
        return client.call("Plugin.Activate")[0] == 200
    except (OSError, ValueError):
        return False
    finally:
        client.close()


def sized_pool(size: int = 28, space: str = "local") -> protocol.RequestPoolRequest:
    """A dynamic RequestPool, as ``docker network create --ipam-opt size=N`` sends it."""
    return protocol.request_pool(space, options={"size": str(size)})


def pool_pair(client: UnixClient, size: int = 28) -> None:
    """One RequestPool and its ReleasePool: a network's subnet claimed and given back."""
    pool_id = client.ok("IpamDriver.RequestPool", sized_pool(size))["PoolID"]
    client.ok("IpamDriver.ReleasePool", protocol.release_pool(pool_id))


def address_pair(client: UnixClient, pool_id: str) -> None:
    """One RequestAddress and its ReleaseAddress: a container's address claimed and given back."""
    address = client.ok("IpamDriver.RequestAddress", protocol.request_address(pool_id))["Address"]
    client.ok("IpamDriver.ReleaseAddress", protocol.release_address(pool_id, address.split("/")[0]))
