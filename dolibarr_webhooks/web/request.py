"""What one request carries, read once and remembered for it: the service, the client's
address, the raw body and the authenticated source. The rate limiter's keys and the views
ask the same questions and get the same answers."""

from __future__ import annotations

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..pipeline.ingest import Service
from ..pipeline.verify import Credentials, authenticate, client_address
from ..settings import Source
from .answers import Refused, unreadable_body

EXTENSION = "dolibarr_webhooks"

# ``g`` and ``request`` are proxies: each use looks the request up again. Every request passes
# here several times, so each function takes the objects once (``_get_current_object``).


def service() -> Service:
    """The app's service (``pipeline/ingest.py``): settings, plugins, store and metrics."""
    return current_app.extensions[EXTENSION]


def request_client() -> str:
    """The client's address, behind the configured number of trusted proxies (once per request)."""
    ctx = g._get_current_object()
    client = ctx.get("client")
    if client is None:
        client = ctx.client = client_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                                             service().settings["TRUSTED_PROXIES"])
    return client


def request_source(token: str | None, body: bytes) -> Source:
    """The source whose secret this request carries, or ``AuthError``. Remembered for the
    request: the rate limiter's per-source key and the view need the same answer."""
    ctx = g._get_current_object()
    source = ctx.get("authenticated")
    if source is None:
        req = request._get_current_object()
        # Without a query string there is no ?token=: werkzeug's args would parse nothing.
        query_token = req.args.get("token") if req.query_string else None
        credentials = Credentials.from_headers(req.headers, path_token=token, query_token=query_token)
        source = ctx.authenticated = authenticate(service().sources.values(), credentials, body)
    return source


def request_body() -> bytes:
    """The raw body, read once per request (the rate limiter's key may need it before the
    view), never form-parsed whatever the Content-Type; ``Refused`` (400, 413) when it
    cannot be read whole. Reading it is also where a malformed chunked encoding, a client
    that stalls or one that hangs up shows, as the server's own exception."""
    ctx = g._get_current_object()
    if "body" not in ctx:
        ctx.body = ctx.body_error = None
        req = request._get_current_object()
        try:
            raw = req.get_data(cache=False)
            # Without Content-Length (chunked), werkzeug stops at MAX_CONTENT_LENGTH without
            # saying whether more was coming: one byte more means the body is too large.
            if req.content_length is None and len(raw) >= current_app.config["MAX_CONTENT_LENGTH"]:
                if req.environ["wsgi.input"].read(1):
                    raise RequestEntityTooLarge()
            ctx.body = raw
        except RequestEntityTooLarge:
            ctx.body_error = Refused(413, "request_entity_too_large", "request body is larger than the configured "
                                                                      "limit (DOLIBARR_WEBHOOKS_MAX_BODY_SIZE)")
        except Exception as exc:  # the server's reader: its exception types are its own
            ctx.body_error = unreadable_body(exc)
    if ctx.body_error is not None:
        raise ctx.body_error
    return ctx.body
