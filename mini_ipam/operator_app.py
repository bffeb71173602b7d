"""The WSGI app of the TCP listener: the operator's GET endpoints, and nothing of the plugin protocol.

It is a separate app, not the plugin app behind a filter, so that no IpamDriver or
Plugin route exists on TCP at all: a POST to ``/IpamDriver.RequestPool`` there is a
404 that reaches no driver code. It shares the driver's ``Operations`` and
``Metrics``, so it reports the same state as the plugin socket's own endpoints.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, NotFound

from mini_ipam.inventory import PoolFilter, inventory_json
from mini_ipam.metrics import Metrics
from mini_ipam.operations import Operations
from stores import StoreError

log = logging.getLogger("mini_ipam.operator")

ROUTES = ("/metrics", "/healthz", "/inventory", "/settings")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def add_operator_routes(app: Flask, operations: Operations, metrics: Metrics) -> None:
    """GET /metrics (Prometheus text), /healthz, /inventory and /settings (JSON): on the plugin socket and on
    TCP alike."""

    @app.get("/metrics", provide_automatic_options=False)
    def prometheus() -> Response:
        return Response(metrics.render(), content_type=PROMETHEUS_TEXT)

    @app.get("/healthz", provide_automatic_options=False)
    def healthz() -> Response:
        status, body = operations.health()
        return _json(body, status)

    @app.get("/settings", provide_automatic_options=False)
    def settings() -> Response:
        return _json(operations.settings())

    @app.get("/inventory", provide_automatic_options=False)
    def inventory() -> Response:
        try:
            with_pools, only, free_blocks = _inventory_query(request.args)
        except ValueError as exc:
            return _json({"Err": f"bad query: {exc}"}, 400)
        taken_at = time.time()
        parents = operations.parent_views(free_blocks=free_blocks or with_pools)
        pools = operations.pools(only) if with_pools else iter(())
        return Response(inventory_json(parents, pools, taken_at), content_type="application/json")


def _inventory_query(args: Mapping[str, str]) -> tuple[bool, PoolFilter, bool]:
    """``?pools=0|1&parent=CIDR&owner=NAME&limit=N&free_blocks=0|1`` (all optional), or ValueError."""
    unknown = sorted(set(args) - {"pools", "parent", "owner", "limit", "free_blocks"})
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r} (known: pools, parent, owner, limit, free_blocks)")
    flags = {}
    for name in ("pools", "free_blocks"):
        text = args.get(name, "1" if name == "pools" else "0")
        if text not in ("0", "1"):
            raise ValueError(f"{name} is 0 or 1, not {text!r}")
        flags[name] = text == "1"
    parent = None
    if "parent" in args:
        try:
            parent = ipaddress.ip_network(args["parent"])
        except ValueError:
            raise ValueError(f"parent {args['parent']!r} is not a subnet in CIDR form") from None
    limit = None
    if "limit" in args:
        if not args["limit"].isdigit() or int(args["limit"]) < 1:
            raise ValueError(f"limit is a whole number of pools from 1, not {args['limit']!r}")
        limit = int(args["limit"])
    return flags["pools"], PoolFilter(parent, args.get("owner") or None, limit), flags["free_blocks"]


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
