"""The opt-in TCP listener (``--metrics-address``): the operator's endpoints where Prometheus can reach them.

It is a waitress server of its own, not a second socket of the plugin socket's
server, and that is deliberate:

* its own request threads (two): a slow or heavy scrape (``/inventory`` reads the
  whole map) never holds one of the threads the engine's calls are answered on;
* its own socket map, event loop and connection limit: waitress counts the limit
  over every socket of one map, so in a shared map clients on TCP could use up the
  plugin socket's connections (or a busy engine lock scrapes out);
* its own WSGI app (``mini_ipam.operator_app``), which has no protocol route at all.

The socket is bound when the listener is made, before the plugin socket exists, so
a port that is taken stops start-up with one sentence and leaves nothing behind.
Its loop runs in a thread started once the plugin socket listens; SIGTERM still
lands in the main thread, whose shutdown stops this loop before the store closes.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.server import create_server

from mini_ipam.listen_address import ListenAddress

log = logging.getLogger("mini_ipam.server")

THREADS = 2
"""Request threads of the listener: Prometheus servers (an HA pair, say) and a person with curl."""


class ListenerError(RuntimeError):
    """The TCP address cannot be listened on."""


class OperatorListener:
    """A waitress server for ``app`` on ``address``, bound now, served in a thread by ``start``."""

    def __init__(self, app: Flask, address: ListenAddress) -> None:
        self.address = address
        self._map: dict[int, Any] = {}
        try:
            self._server = create_server(
                app,
                map=self._map,
                listen=str(address),
                ipv4=address.version == 4,
                ipv6=address.version == 6,
                threads=THREADS,
                ident="mini-ipam",
                clear_untrusted_proxy_headers=True,
                channel_timeout=10,
                connection_limit=32,
                max_request_body_size=64 * 1024,  # only GETs are answered: a body is never needed
            )
        except OSError as exc:
            wasyncore.close_all(self._map, ignore_all=True)
            raise ListenerError(f"cannot listen on {address}: {_reason(exc, address)}") from None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self._server.run, name="mini-ipam-operator-listener", daemon=True)
        self._thread.start()
        log.info("serving GET /metrics, /healthz and /inventory on %s", self.address.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the socket and every connection, and let replies being written finish."""
        if self._thread is not None and self._thread.is_alive():
            # Closed from inside the loop's own thread (a trigger thunk): the loop ends once its map is empty.
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map, ignore_all=True))
            self._thread.join(timeout)
        else:
            wasyncore.close_all(self._map, ignore_all=True)
        self._server.task_dispatcher.shutdown(timeout=timeout)


def _reason(exc: OSError, address: ListenAddress) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"the port is already in use (by another mini-ipam, or another exporter?): choose another "
            f"--metrics-address, or stop what listens there (`ss -ltnp 'sport = :{address.port}'` shows it)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return "that address is not one of this host's: choose one that `ip address` lists, or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return "permission denied: ports below 1024 need root; choose a port from 1024 up"
    return exc.strerror or str(exc)
