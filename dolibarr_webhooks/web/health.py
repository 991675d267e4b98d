"""Liveness (/health), readiness (/ready) and Prometheus metrics (/metrics)."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from ..store import SCHEMA_VERSION, error_line, schema_problem
from .errors import json_error
from .ratelimit import storage_state
from .request import service

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """The process answers: nothing else is checked, so a slow store never restarts it."""
    return jsonify(service().health())


def readiness() -> tuple[bool, dict]:
    """Whether this process can take events: the store answers, is migrated and takes a write
    within the request deadline, the plugins are loaded. A read alone said ready while every
    write failed (a read-only file, stale read-only connections)."""
    svc = service()
    checks = {"store": False, "schema": False, "writes": False, "plugins": False}
    problems: dict[str, str] = {}
    try:
        checks["store"] = svc.store.ping()
        if not checks["store"]:
            problems["store"] = "the store does not answer"
        else:
            version = svc.store.schema_version()
            problem = schema_problem(version)
            checks["schema"] = problem is None
            if problem:
                problems["schema"] = problem + (": run 'dolibarr-webhooks migrate'" if version < SCHEMA_VERSION else "")
            if version:
                failure = svc.store.probe_write()
                checks["writes"] = failure is None
                if failure:
                    problems["writes"] = f"a write fails: {error_line(failure)}"
    except SQLAlchemyError as exc:
        problems["store"] = f"the store failed: {type(exc).__name__}"
    checks["plugins"] = bool(svc.plugins.info)
    if not checks["plugins"]:
        problems["plugins"] = "no plugin is loaded"
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not_ready", "checks": checks,
            "plugins": {name: info.status for name, info in svc.plugins.info.items()}}
    if problems:
        body["problems"] = problems
    # The limiter's store does not decide readiness (events are let through without it),
    # but an operator must see that the counters are no longer shared.
    limiter = storage_state()
    if limiter is not None:
        body["ratelimit"] = limiter
    return ok, body


@bp.get("/ready")
def ready():
    """The store answers, is migrated and takes writes, and the plugins are loaded; 503 otherwise."""
    ok, body = readiness()
    response = jsonify(body)
    response.status_code = 200 if ok else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics():
    svc = service()
    if not svc.settings["METRICS"]:
        return json_error(404, "not_found", "metrics are turned off (DOLIBARR_WEBHOOKS_METRICS)")
    token = svc.settings["METRICS_TOKEN"]
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            response = json_error(401, "unauthorized", "metrics need Authorization: Bearer <METRICS_TOKEN>")
            response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return Response(svc.metrics.exposition(svc.store), mimetype="text/plain; version=0.0.4")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
