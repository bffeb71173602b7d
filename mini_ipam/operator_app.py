"""The WSGI app of the TCP listener: the operator's GET endpoints, and nothing of the plugin protocol.

It is a separate app, not the plugin app behind a filter, so that no IpamDriver or
Plugin route exists on TCP at all: a POST to ``/IpamDriver.RequestPool`` there is a
404 that reaches no driver code. It shares the driver's ``Operations`` and
``Metrics``, so it reports the same state as the plugin socket's own endpoints.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, NotFound

from mini_ipam.metrics import Metrics
from mini_ipam.operations import Operations
from stores import StoreError

log = logging.getLogger("mini_ipam.operator")

ROUTES = ("/metrics", "/healthz", "/inventory")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def add_operator_routes(app: Flask, operations: Operations, metrics: Metrics) -> None:
    """GET /metrics (Prometheus text), /healthz and /inventory (JSON): on the plugin socket and on TCP alike."""

    @app.get("/metrics", provide_automatic_options=False)
    def prometheus() -> Response:
        return Response(metrics.render(), content_type=PROMETHEUS_TEXT)

    @app.get("/healthz", provide_automatic_options=False)
    def healthz() -> Response:
        status, body = operations.health()
        return _json(body, status)

    @app.get("/inventory", provide_automatic_options=False)
    def inventory() -> Response:
        return _json(operations.inventory().to_json())


def create_operator_app(operations: Operations, metrics: Metrics) -> Flask:
    """GET /metrics, /healthz and /inventory; every other path is a 404 with ``{"Err": ...}``."""
    app = Flask("mini_ipam.operator")
    add_operator_routes(app, operations, metrics)

    @app.errorhandler(Exception)
    def refused(error: Exception) -> Response:
        if isinstance(error, NotFound):
            return _json({"Err": f"no such endpoint here: this listener serves GET {', '.join(ROUTES)} only; "
                                 "the plugin protocol is served on the plugin socket"}, 404)  # fmt: skip
        if isinstance(error, HTTPException):
            return _json({"Err": f"{error.name}: {error.description}"}, error.code or 500)
        if isinstance(error, StoreError):
            return _json({"Err": f"the store did not answer: {error}"}, 503)
        log.error("unexpected error on the operator listener", exc_info=error)
        return _json({"Err": f"internal error in mini-ipam ({type(error).__name__}); see the driver's log"}, 500)

    return app


def _json(body: object, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
