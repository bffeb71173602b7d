"""The baselines of ``framework_floor.py``: servers that do no IPAM at all, on a Unix socket.

``python bench/bare_server.py --socket PATH``
    a bare Flask app, one route that reads the body and returns a tiny JSON object, served by
    ``mini_ipam.server.serve``: the very waitress settings the driver runs with (threads, channel
    timeout, socket mode), so the only difference from the driver is the driver's own work.
``python bench/bare_server.py --socket PATH --raw``
    no HTTP stack at all: a socket loop that answers every request with canned bytes. It shows what
    the client and the kernel cost by themselves (the floor under every other figure).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from pathlib import Path
from typing import Any

CONTENT_TYPE = "application/vnd.docker.plugins.v1.1+json"
CANNED = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/vnd.docker.plugins.v1.1+json\r\n\r\n{}"


def bare_app() -> Any:
    """The one-route Flask app: read the body, answer ``{"Data": {}}``."""
    from flask import Flask, Response, request

    app = Flask("bare")

    @app.post("/<path:name>")
    def tiny(name: str) -> Response:
        request.get_data(cache=False)
        return Response(json.dumps({"Data": {}}), content_type=CONTENT_TYPE)

    return app


def bare_flask(path: Path, threads: int) -> None:
    """Serve the bare app with the driver's own serve()."""
    from mini_ipam.server import serve

    serve(bare_app(), path, threads=threads)


def raw(path: Path) -> None:
    """Answer every request on every connection with ``CANNED``, with no parsing beyond the header end."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)

    def serve_connection(connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while True:
                    end = buffer.find(b"\r\n\r\n")
                    if end < 0:
                        break
                    head = buffer[:end].lower()
                    marker = head.find(b"content-length:")
                    length = int(head[marker + 15 :].split(b"\r\n", 1)[0]) if marker >= 0 else 0
                    if len(buffer) < end + 4 + length:
                        break
                    buffer = buffer[end + 4 + length :]
                    connection.sendall(CANNED)

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(connection,), daemon=True).start()


def main() -> None:
    """Parse the flags and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--raw", action="store_true")
    args = parser.parse_args()
    if args.raw:
        raw(args.socket)
    else:
        bare_flask(args.socket, args.threads)


if __name__ == "__main__":
    main()
