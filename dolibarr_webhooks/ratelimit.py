"""Rate limits with Flask-Limiter, per source and per client address.

In-memory by default (each process counts on its own); with
``DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL=redis://...`` every gunicorn worker and every
host shares the counters. A breach is a JSON 429 with ``Retry-After``: Dolibarr shows
the failure (and, for most targets, rolls back the user's action), so set the limit well
above the busiest real hour and use it against floods, not as traffic shaping.

The limiter never turns an outage of its own store into refused events: when Redis does
not answer, requests are let through (``swallow_errors``) and counted in memory.
"""

from __future__ import annotations

import hashlib

from flask import Flask, request
from flask_limiter import Limiter

from .auth import SIGNATURE_HEADER, AuthError
from .receiver import request_client, request_source
from .store import redacted_url

SCOPE = "webhook"


def client_key() -> str:
    return "client:" + request_client()


def source_key() -> str:
    # A signature covers the body, so only then is the body read (and kept for the view).
    signed = SIGNATURE_HEADER in request.headers or "webhook-signature" in request.headers
    try:
        body = request.get_data(cache=True) if signed else b""
        return "source:" + request_source((request.view_args or {}).get("token"), body).name
    except AuthError:
        return "source:-"  # unauthenticated requests share one bucket; they get 401 anyway


def key_prefix(database_url: str) -> str:
    """Counters are shared by the processes and hosts of one deployment, and only by them:
    the prefix is derived from the store they share (its URL without the password), so
    two deployments on one Redis never mix their counts."""
    # An unparsable URL fails later, at the store, with a clear message.
    url = redacted_url(database_url) or database_url
    return "dolibarr_webhooks:" + hashlib.sha256(url.encode()).hexdigest()[:12]


def init_app(app: Flask) -> None:
    rule = app.config["RATELIMIT"]
    if not rule:
        return
    message = f"rate limit exceeded: at most {rule} per source and per client address"

    # Registered before the limiter's own after_request, so it runs after it (Flask runs
    # them in reverse): Flask-Limiter puts Retry-After on every answer; only a 429 means it.
    @app.after_request
    def _retry_after_only_on_429(response):
        if response.status_code != 429:
            response.headers.pop("Retry-After", None)
        return response

    limiter = Limiter(
        client_key,
        app=app,
        storage_uri=app.config["RATELIMIT_STORAGE_URL"],
        strategy="moving-window",
        headers_enabled=True,  # X-RateLimit-* on every answer, Retry-After on a 429
        key_prefix=key_prefix(app.config["DATABASE_URL"]),
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    from .receiver import bp

    # Shared limits: /webhook, /webhook/test and /webhook/events draw from the same buckets.
    limiter.shared_limit(rule, scope=SCOPE, key_func=client_key, error_message=message)(bp)
    limiter.shared_limit(rule, scope=SCOPE, key_func=source_key, error_message=message)(bp)
    app.extensions["dolibarr_webhooks_limiter"] = limiter
