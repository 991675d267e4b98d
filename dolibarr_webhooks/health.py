"""Liveness (/health), readiness (/ready) and Prometheus metrics (/metrics)."""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from .errors import json_error
from .store import SCHEMA_VERSION

bp = Blueprint("health", __name__)


def service():
    return current_app.extensions["dolibarr_webhooks"]


@bp.get("/health")
def health():
    """The process answers: nothing else is checked, so a slow store never restarts it."""
    return jsonify(service().health())


@bp.get("/ready")
def ready():
    """The store answers and is migrated, and the plugins are loaded."""
    svc = service()
    checks = {"store": svc.store.ping()}
    checks["schema"] = checks["store"] and svc.store.schema_version() == SCHEMA_VERSION
    checks["plugins"] = bool(svc.plugins.info)
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not_ready", "checks": checks,
            "plugins": {name: info.status for name, info in svc.plugins.info.items()}}
    return jsonify(body), (200 if ok else 503)


@bp.get("/metrics")
def metrics():
    config = current_app.config
    if not config["METRICS"]:
        return json_error(404, "not_found", "metrics are turned off (DOLIBARR_WEBHOOKS_METRICS)")
    token = config["METRICS_TOKEN"]
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return json_error(401, "unauthorized", "metrics need Authorization: Bearer <METRICS_TOKEN>")
    svc = service()
    return Response(svc.metrics.exposition(svc.store), mimetype="text/plain; version=0.0.4")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
