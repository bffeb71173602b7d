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

from flask import Flask, Response, abort, g, request
from werkzeug.exceptions import HTTPException

from mini_ipam.driver import Driver, Json
from mini_ipam.errors import InvalidRequest, IpamError
from mini_ipam.logs import FIELDS
from mini_ipam.metrics import Metrics
from mini_ipam.operations import Operations

CONTENT_TYPE = "application/vnd.docker.plugins.v1.1+json"
MAX_BODY = 64 * 1024
"""Larger requests are refused: real ones are a few hundred bytes."""

log = logging.getLogger("mini_ipam.requests")


def create_app(driver: Driver, *, operations: Operations | None = None, metrics: Metrics | None = None) -> Flask:
    """The WSGI app for ``driver``; no module-level state, so tests can build many.

    Besides the plugin protocol (POST), the socket answers ``GET /healthz``,
    ``GET /metrics`` (Prometheus text) and ``GET /inventory`` (the map, as JSON).
    """
    app = Flask("mini_ipam")
    operations = operations or Operations(driver.allocator)
    metrics = metrics or Metrics()
    metrics.watch_map(operations.inventory)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    methods: dict[str, Callable[[Json], Json]] = {
        "GetCapabilities": driver.get_capabilities,
        "GetDefaultAddressSpaces": driver.get_default_address_spaces,
        "RequestPool": driver.request_pool,
        "ReleasePool": driver.release_pool,
        "RequestAddress": driver.request_address,
        "ReleaseAddress": driver.release_address,
    }

    @app.post("/Plugin.Activate", provide_automatic_options=False)
    def activate() -> Response:
        return reply({"Implements": ["IpamDriver"]})

    @app.post("/IpamDriver.<method>", provide_automatic_options=False)
    def ipam(method: str) -> Response:
        handler = methods.get(method)
        if handler is None:
            return reply({"Err": f"unknown method IpamDriver.{method}"}, 404)
        g.ipam_method = method
        body = parse_body(request.get_data(cache=False))
        g.ipam_pool = body.get("PoolID") or body.get("Pool") or ""
        result = handler(body)
        g.ipam_pool = result.get("PoolID", g.ipam_pool)
        return reply(result)

    @app.get("/healthz")
    def healthz() -> Response:
        status, body = operations.health()
        return Response(json.dumps(body), status=status, content_type="application/json")

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/inventory")
    def inventory() -> Response:
        return Response(json.dumps(operations.inventory().to_json()), content_type="application/json")

    @app.errorhandler(IpamError)
    def refused(error: IpamError) -> Response:
        g.error_kind = type(error).__name__
        return reply({"Err": str(error)}, error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        g.error_kind = f"http_{error.code}"
        return reply({"Err": f"{error.name}: {error.description}"}, error.code or 500)

    @app.errorhandler(Exception)
    def crashed(error: Exception) -> Response:
        g.error_kind = "internal"
        log.exception("unexpected error in %s", request.path)
        return reply({"Err": f"internal error in mini-ipam ({type(error).__name__}); see the driver's log"}, 500)

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()
        if (request.content_length or 0) > MAX_BODY:
            abort(413)  # even for calls that never read their body

    @app.after_request
    def log_request(response: Response) -> Response:
        if request.method != "POST":
            return response  # health checks and scrapes are not protocol requests
        method = getattr(g, "ipam_method", request.path.lstrip("/"))
        seconds = time.perf_counter() - getattr(g, "started", time.perf_counter())
        error = None if response.status_code == 200 else _printable(_error_of(response), 300)
        known = hasattr(g, "ipam_method") or request.path == "/Plugin.Activate"
        method = _printable(method)
        pool = _printable(str(getattr(g, "ipam_pool", "") or "-"))
        # Paths are the client's to choose: only known methods become metric labels.
        label = method if known else "other"
        metrics.observe_request(label, response.status_code, getattr(g, "error_kind", None), seconds)
        fields = {
            "method": method,
            "pool": pool,
            "status": response.status_code,
            "duration_ms": round(seconds * 1000, 3),
        }
        if error is not None:
            fields["error"] = error
        outcome = "ok" if error is None else f"{response.status_code} {error}"
        log.info("%s pool=%s %s %.1fms", method, pool, outcome, seconds * 1000, extra={FIELDS: fields})
        return response

    return app


def parse_body(data: bytes) -> Json:
    """The request's JSON object; an empty body is an empty object."""
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def reply(payload: dict[str, Any], status: int = 200) -> Response:
    """A JSON reply with the plugin protocol's content type."""
    return Response(json.dumps(payload), status=status, content_type=CONTENT_TYPE)


def _printable(text: str, limit: int = 120) -> str:
    """``text`` safe for one log line: control characters escaped, length capped."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def _error_of(response: Response) -> str:
    try:
        return str(json.loads(response.get_data()).get("Err", ""))
    except ValueError:
        return ""
