"""Every error is a small JSON document with the right status: never an HTML page,
never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, request
from werkzeug.exceptions import HTTPException, InternalServerError

from .answers import INTERNAL_ERROR, JSON_TYPE, error_body, json_bytes

logger = logging.getLogger(__name__)

PUBLIC_ENDPOINTS = [
    "POST /webhook/<secret>  (or /webhook with ?token=, Authorization or a signature)",
    "GET  /webhook/events    (authenticated)",
    "POST /webhook/test      (authenticated)",
    "GET  /health",
    "GET  /ready",
    "GET  /metrics",
]


def record_outcome(status: int, reason: str) -> None:
    """Count an answer in the metrics and name its outcome in the access log line."""
    g.outcome = reason
    service = current_app.extensions.get("dolibarr_webhooks")
    if service is not None:
        service.metrics.request(status, reason)


def json_error(status: int, error: str, message: str, **extra):
    return current_app.response_class(json_bytes(error_body(status, error, message, **extra)), status,
                                      mimetype=JSON_TYPE)


def _http_error(exc: HTTPException):
    extra = {}
    if exc.code == 404:
        extra["endpoints"] = PUBLIC_ENDPOINTS
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        extra["allowed_methods"] = sorted(exc.valid_methods)
    if exc.code == 413:
        message = "request body is larger than the configured limit (DOLIBARR_WEBHOOKS_MAX_BODY_SIZE)"
    else:
        message = exc.description or exc.name
    response = json_error(exc.code or 500, exc.name.lower().replace(" ", "_"), message, **extra)
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    # Requests that never reach the receiver (unknown path 404, wrong method 405, the rate
    # limiter's 429, a body over the limit 413) are counted too.
    record_outcome(exc.code or 500, exc.name.lower().replace(" ", "_"))
    return response


def _unexpected(exc: Exception):
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    logger.exception("unexpected error on %s %s", request.method, request.endpoint)
    record_outcome(500, INTERNAL_ERROR[0])
    return json_error(500, *INTERNAL_ERROR)


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InternalServerError, _unexpected)
    app.register_error_handler(Exception, _unexpected)
