"""The Flask app: HTTP routes of the plugin protocol, and the one error handler.

The engine posts every call with no Content-Type and, for calls without
arguments, an empty body, so bodies are parsed by hand. Every reply is a JSON
object; every refusal is a non-200 status with ``{"Err": message}``. Nothing may
escape as a dropped connection: the engine would retry the call, body-less, for
half a minute.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mini_ipam import protocol
from mini_ipam.driver import Driver
from mini_ipam.errors import IpamError
from mini_ipam.logs import FIELDS
from mini_ipam.metrics import Metrics
from mini_ipam.operations import Operations
from mini_ipam.operator_app import add_operator_routes
from mini_ipam.protocol import CONTENT_TYPE, Json

log = logging.getLogger("mini_ipam.requests")

ACTIVATED = json.dumps(protocol.MANIFEST).encode()
ADDRESS_METHODS = frozenset({protocol.REQUEST_ADDRESS, protocol.RELEASE_ADDRESS})
"""Per-container traffic: granted, it is logged at debug, so that level info keeps a line per
network change and per refusal rather than one per container start and stop."""
DEBUG_WHEN_GRANTED = ADDRESS_METHODS | {protocol.GET_CAPABILITIES, protocol.GET_DEFAULT_ADDRESS_SPACES}
"""Granted, logged at debug: the address methods, and the questions engines 26 and later ask again
before every network change (28 asks for the address spaces two or three times per network create)."""
OTHER = "other"
"""The metric label of requests to paths that are not protocol methods."""


def create_app(driver: Driver, *, operations: Operations | None = None, metrics: Metrics | None = None) -> Flask:
    """The WSGI app for ``driver``; no module-level state, so tests can build many.

    Besides the plugin protocol (POST), the socket answers ``GET /healthz``,
    ``GET /metrics`` (Prometheus text) and ``GET /inventory`` (the map, as JSON).

    Each protocol request is timed, counted and logged by its own view, which
    also turns its refusals into replies; the error handlers do the same for
    requests that never reach a view (unknown paths, oversized bodies). No
    before- or after-request hook runs: on the driver's hot path the after-request
    one cost more than a bare Flask route's whole dispatch. Every protocol view
    reads its body, which is what refuses one over ``MAX_BODY`` (413).
    """
    app = Flask("mini_ipam")
    operations = operations or Operations(driver.allocator)
    metrics = metrics or Metrics()
    metrics.watch_map(operations.summary)
    record = RequestRecorder(metrics)
    app.config["MAX_CONTENT_LENGTH"] = protocol.MAX_BODY
    methods: dict[str, Callable[[Json], Any]] = {
        protocol.GET_CAPABILITIES: driver.get_capabilities,
        protocol.GET_DEFAULT_ADDRESS_SPACES: driver.get_default_address_spaces,
        protocol.REQUEST_POOL: driver.request_pool,
        protocol.RELEASE_POOL: driver.release_pool,
        protocol.REQUEST_ADDRESS: driver.request_address,
        protocol.RELEASE_ADDRESS: driver.release_address,
    }

    @app.post(protocol.path(protocol.ACTIVATE), provide_automatic_options=False)
    def activate() -> Response:
        started = time.perf_counter()
        request.get_data(cache=False)  # unused, but read: an oversized body is refused here too (413)
        record(protocol.ACTIVATE, protocol.ACTIVATE, "", 200, started)
        return reply_bytes(ACTIVATED)

    def answer(method: str, handler: Callable[[Json], Any]) -> Callable[[], Response]:
        """The view of one protocol method."""
        summarize = method == protocol.REQUEST_POOL  # its log line says what was asked, not only what was granted

        def view() -> Response:
            started = time.perf_counter()
            pool: object = ""
            asked: dict[str, str] | None = None
            try:
                body = protocol.parse_body(request.get_data(cache=False))
                pool = body.get("PoolID") or body.get("Pool") or ""
                if summarize:
                    asked = protocol.pool_request_summary(body)
                result = handler(body)
            except Exception as error:  # every refusal, and every crash, is answered and logged here
                refusal = Refusal(error, request.path)
                record(method, method, pool, refusal.status, started, refusal.kind, refusal.message, asked)
                return refusal.reply()
            record(method, method, result.get("PoolID", pool), 200, started, asked=asked)
            return reply(result)

        return view

    # One static route per method: matched by a dict look-up, where a converter costs a regex.
    for method, handler in methods.items():
        app.add_url_rule(
            protocol.path(method), method, answer(method, handler), methods=["POST"], provide_automatic_options=False
        )

    @app.post(f"/{protocol.DRIVER_PREFIX}<method>", provide_automatic_options=False)
    def unknown(method: str) -> Response:
        message = f"unknown method {protocol.DRIVER_PREFIX}{method}"
        record(f"{protocol.DRIVER_PREFIX}{method}", OTHER, "", 404, time.perf_counter(), None, message)
        return reply({"Err": message}, 404)

    add_operator_routes(app, operations, metrics)

    @app.errorhandler(Exception)
    def unanswered(error: Exception) -> Response:
        """Requests that failed before reaching a view, or in the operator's GET routes."""
        refusal = Refusal(error, request.path)
        if request.method == "POST":  # health checks and scrapes are not protocol requests
            method = request.path.lstrip("/")
            label = method if method == protocol.ACTIVATE else OTHER
            record(method, label, "", refusal.status, None, refusal.kind, refusal.message)
        return refusal.reply()

    return app


class RequestRecorder:
    """Counts, times and logs one answered protocol request."""

    def __init__(self, metrics: Metrics) -> None:
        self._observe = metrics.observe_request

    def __call__(
        self,
        method: str,
        label: str,
        pool: object,
        status: int,
        started: float | None,
        error_kind: str | None = None,
        error: str | None = None,
        asked: dict[str, str] | None = None,
    ) -> None:
        """Record a request: ``label`` is its metric label (only known methods: paths are the client's to choose).

        ``asked``: what a RequestPool asked for (``protocol.pool_request_summary``), logged with its outcome.
        """
        seconds = 0.0 if started is None else time.perf_counter() - started
        self._observe(label, status, error_kind, seconds)
        if status >= 500:  # the driver or its store failed, not the request: something to look at
            level = logging.WARNING
        else:
            level = logging.DEBUG if error is None and method in DEBUG_WHEN_GRANTED else logging.INFO
        if log.isEnabledFor(level):
            _log_line(level, method, pool, status, error, seconds, asked)


class Refusal:
    """The answer to a request that failed: its status, the kind of error for the metrics, its message."""

    def __init__(self, error: Exception, where: str) -> None:
        if isinstance(error, IpamError):
            self.status, self.kind, self.message = error.status, type(error).__name__, str(error)
        elif isinstance(error, HTTPException):
            self.status, self.kind = error.code or 500, f"http_{error.code}"
            self.message = f"{error.name}: {error.description}"
        else:
            log.error("unexpected error in %s", where, exc_info=error)
            self.status, self.kind = 500, "internal"
            self.message = f"internal error in mini-ipam ({type(error).__name__}); see the driver's log"

    def reply(self) -> Response:
        """The ``{"Err": ...}`` reply."""
        return reply({"Err": self.message}, self.status)


def _log_line(
    level: int, method: str, pool: object, status: int, error: str | None, seconds: float,
    asked: dict[str, str] | None = None,
) -> None:  # fmt: skip
    method = _printable(method)
    pool_text = _printable(str(pool or "-"))
    fields: dict[str, Any] = {"method": method, "pool": pool_text, "status": status,
                              "duration_ms": round(seconds * 1000, 3)}  # fmt: skip
    if error is not None:
        error = _printable(error, 300)
        fields["error"] = error
    outcome = "ok" if error is None else f"{status} {error}"
    if asked is not None:
        fields["asked"] = asked
        outcome += " [asked " + " ".join(f"{key}={_printable(value, 60)}" for key, value in asked.items()) + "]"
    log.log(level, "%s pool=%s %s %.1fms", method, pool_text, outcome, seconds * 1000, extra={FIELDS: fields})


def reply(payload: dict[str, Any], status: int = 200) -> Response:
    """A JSON reply with the plugin protocol's content type."""
    return Response(json.dumps(payload), status=status, content_type=CONTENT_TYPE)


def reply_bytes(body: bytes, status: int = 200) -> Response:
    """A reply whose JSON body is already encoded."""
    return Response(body, status=status, content_type=CONTENT_TYPE)


def _printable(text: str, limit: int = 120) -> str:
    """``text`` safe for one log line: control characters escaped, length capped."""
    if len(text) <= limit and text.isprintable():
        return text  # nearly every line: nothing to escape
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."
