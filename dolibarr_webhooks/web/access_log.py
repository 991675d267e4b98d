"""The web's side of logging: a request id for every request (shared with nginx), and one
access line per request with its outcome, trigger code and event id, the target redacted."""

from __future__ import annotations

import logging
import re
import time

from flask import Flask, g, request

from ..ids import random_hex
from ..logs import configure, redact, request_id
from ..settings import Settings

access_logger = logging.getLogger("dolibarr_webhooks.access")

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NOT_LOGGED = frozenset({"/health", "/metrics", "/ready"})  # probes: a line each would drown the rest
_ACCESS_KEYS = ("outcome", "trigger_code", "event_id", "source")  # what the request's handling noted on g


def init_app(app: Flask, settings: Settings) -> None:
    """Logs at the settings' level and format; ``Settings.sensitive_values`` (every source's
    secrets, TOML sources included, the metrics token and the plugins' credentials) are masked
    in every line."""
    configure(settings["LOG_LEVEL"], settings["LOG_FORMAT"], settings.sensitive_values)

    @app.before_request
    def _begin() -> None:
        ctx = g._get_current_object()
        ctx.request_started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        # nginx sends its $request_id, so both logs share one id; anything odd is replaced.
        rid = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else random_hex()
        ctx.request_id = rid
        ctx.request_id_token = request_id.set(rid)

    @app.after_request
    def _access_log(response):
        ctx, req = g._get_current_object(), request._get_current_object()
        rid = ctx.get("request_id")
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        if req.path in _NOT_LOGGED:
            return response
        duration = (time.perf_counter() - ctx.get("request_started", time.perf_counter())) * 1000
        target = redact(req.full_path.rstrip("?"))
        status, method = response.status_code, req.method
        outcome, trigger_code, event_id, source = (ctx.get(key) for key in _ACCESS_KEYS)
        parts = [f"{method} {target} {status}"]
        parts.extend(str(value) for value in (outcome, trigger_code, event_id, source) if value)
        client = ctx.get("client") or req.remote_addr
        access_logger.info("%s %.1fms from %s", " ".join(parts), duration, client, extra={
            "status": status, "outcome": outcome, "trigger_code": trigger_code, "event_id": event_id,
            "source": source, "client": client, "duration_ms": round(duration, 2), "method": method, "path": target,
        })
        return response

    @app.teardown_request
    def _end(_exc=None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id.reset(token)
