"""Rate limits with Flask-Limiter: per source, and per client address for refused requests.

Two buckets, each of the configured rule: the requests of each source (an authenticated
request counts against its source), and the authentication failures (401, 403) of each
client address. A request with valid credentials is never refused because of earlier
failures from its address: Dolibarr's own address may be the one a scanner or a mistyped
target keeps failing from, and a 429 there would roll Dolibarr's user actions back.

In-memory by default (each process counts on its own); with
``DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL=redis://...`` every gunicorn worker and every
host shares the counters. A breach is a JSON 429 with ``Retry-After``: Dolibarr shows
the failure (and, for most targets, rolls back the user's action), so set the limit well
above the busiest real hour and use it against floods, not as traffic shaping.

The limiter never turns an outage of its own store into refused events: when Redis does
not answer, requests are let through (``swallow_errors``) and counted in each process's
memory. That is logged once per process (on ``dolibarr_webhooks.web.ratelimit``) and shown by
``/ready`` and ``check``.
"""

from __future__ import annotations

import hashlib
import logging

from flask import Flask, current_app, request
from flask_limiter import Limiter

from ..pipeline.verify import SIGNATURE_HEADER, AuthError
from ..logs import redact
from ..settings import Settings
from .request import EXTENSION as SERVICE, Refused, request_body, request_client, request_source
from .views import bp

SCOPE = "webhook"
FAILURES_SCOPE = "webhook-failures"
EXTENSION = "dolibarr_webhooks_limiter"
# A Redis that does not answer must cost a request milliseconds, not a worker timeout.
REDIS_TIMEOUTS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}

logger = logging.getLogger(__name__)


def client_key() -> str:
    return "client:" + request_client()


def source_key() -> str:
    # A signature covers the body, so only then is the body read (and kept for the view).
    signed = SIGNATURE_HEADER in request.headers or "webhook-signature" in request.headers
    try:
        body = request_body() if signed else b""
        return "source:" + request_source((request.view_args or {}).get("token"), body).name
    except (AuthError, Refused):
        return "source:-"  # unauthenticated requests share one bucket; they get 401 (or 400, 413) anyway


def authenticated() -> bool:
    """The request carries valid credentials: the failures bucket does not apply to it."""
    return source_key() != "source:-"


def refused(response) -> bool:
    return response.status_code in (401, 403)


def storage_state(app: Flask | None = None) -> dict | None:
    """Where the counters are kept and whether that store answers now; None without a limit."""
    app = app or current_app
    limiter = app.extensions.get(EXTENSION)
    if limiter is None:
        return None
    url = _settings(app)["RATELIMIT_STORAGE_URL"]
    state = {"storage": redact(url, keep_user=True), "shared": not url.startswith("memory://")}
    if state["shared"]:
        try:
            state["reachable"] = bool(limiter.storage.check())
        except Exception:  # the storage's client raises its own types; unreachable all the same
            state["reachable"] = False
        if not state["reachable"]:
            state["problem"] = (f"{state['storage']} does not answer: each process counts in its own memory "
                                "until it does")
    return state


def key_prefix(database_url: str) -> str:
    """Counters are shared by the processes and hosts of one deployment, and only by them:
    the prefix is derived from the store they share (its URL without the password), so
    two deployments on one Redis never mix their counts."""
    url = redact(database_url, keep_user=True)
    return "dolibarr_webhooks:" + hashlib.sha256(url.encode()).hexdigest()[:12]


def _settings(app: Flask) -> Settings:
    return app.extensions[SERVICE].settings


def init_app(app: Flask) -> None:
    settings = _settings(app)
    rule = settings["RATELIMIT"]
    if not rule:
        return
    message = f"rate limit exceeded: at most {rule} per source, and {rule} refused requests per client address"

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
        storage_uri=settings["RATELIMIT_STORAGE_URL"],
        strategy="moving-window",
        headers_enabled=True,  # X-RateLimit-* on every answer, Retry-After on a 429
        key_prefix=key_prefix(settings["DATABASE_URL"]),
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        storage_options=REDIS_TIMEOUTS if settings["RATELIMIT_STORAGE_URL"].startswith("redis") else {},
    )
    # Flask-Limiter says once per process when it falls back to memory and when its store
    # recovers; on its own logger nobody would read it.
    limiter.logger = logger
    # Shared limits: /webhook, /webhook/test and /webhook/events draw from the same buckets.
    # Failures are only tested before the request and counted after it, once refused.
    limiter.shared_limit(rule, scope=FAILURES_SCOPE, key_func=client_key, error_message=message,
                         exempt_when=authenticated, deduct_when=refused)(bp)
    limiter.shared_limit(rule, scope=SCOPE, key_func=source_key, error_message=message)(bp)
    app.extensions[EXTENSION] = limiter
