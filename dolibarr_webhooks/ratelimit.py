"""Rate limits with Flask-Limiter, per source and per client address.

In-memory by default (one process); ``DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL=redis://...``
shares the counters between gunicorn workers and hosts. A breach is a JSON 429 with
``Retry-After``: Dolibarr will show the failure, so set the limit well above the
busiest real hour and use it against floods, not as traffic shaping.
"""

from __future__ import annotations

from flask import Flask, current_app, g, request
from flask_limiter import Limiter

from .auth import AuthError, Credentials, authenticate
from .netaccess import client_address


def client_key() -> str:
    if "client" not in g:
        g.client = client_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                                  current_app.config["TRUSTED_PROXIES"])
    return "client:" + g.client


def source_key() -> str:
    svc = current_app.extensions["dolibarr_webhooks"]
    credentials = Credentials.from_headers(request.headers, path_token=(request.view_args or {}).get("token"),
                                           query_token=request.args.get("token"))
    try:
        body = request.get_data(cache=True) if (credentials.signature or credentials.webhook_signature) else b""
        return "source:" + authenticate(list(svc.sources.values()), credentials, body).name
    except AuthError:
        return "source:-"  # unauthenticated requests share one bucket; they get 401 anyway


def init_app(app: Flask) -> None:
    rule = app.config["RATELIMIT"]
    if not rule:
        return
    limiter = Limiter(client_key, app=app, storage_uri=app.config["RATELIMIT_STORAGE_URL"],
                      headers_enabled=True, strategy="moving-window", key_prefix="dolibarr_webhooks")
    from .receiver import bp

    limiter.limit(rule, key_func=client_key)(bp)
    limiter.limit(rule, key_func=source_key)(bp)
    app.extensions["dolibarr_webhooks_limiter"] = limiter
