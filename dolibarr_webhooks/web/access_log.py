"""The web's side of logging: a request id for every request (shared with nginx), and one
access line per request with its outcome, trigger code and event id, the target redacted."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request

from ..logs import configure, redact, request_id
from ..settings import Settings

access_logger = logging.getLogger("dolibarr_webhooks.access")

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def init_app(app: Flask, settings: Settings) -> None:
    """Logs at the settings' level and format; ``Settings.sensitive_values`` (every source's
    secrets, TOML sources included, the metrics token and the plugins' credentials) are masked
    in every line."""
    configure(settings["LOG_LEVEL"], settings["LOG_FORMAT"], settings.sensitive_values)

    @app.before_request
    def _begin() -> None:
        g.request_started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        # nginx sends its $request_id, so both logs share one id; anything odd is replaced.
        rid = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        g.request_id = rid
        g.request_id_token = request_id.set(rid)

    @app.after_request
    def _access_log(response):
        rid = g.get("request_id")
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        if request.path in ("/health", "/metrics", "/ready"):
            return response
        duration = (time.perf_counter() - g.get("request_started", time.perf_counter())) * 1000
        target = redact(request.full_path.rstrip("?"))
        parts = [f"{request.method} {target} {response.status_code}"]
        for key in ("outcome", "trigger_code", "event_id", "source"):
            if g.get(key):
                parts.append(str(g.get(key)))
        client = g.get("client") or request.remote_addr
        access_logger.info("%s %.1fms from %s", " ".join(parts), duration, client, extra={
            "status": response.status_code, "outcome": g.get("outcome"), "trigger_code": g.get("trigger_code"),
            "event_id": g.get("event_id"), "source": g.get("source"), "client": client,
            "duration_ms": round(duration, 2), "method": request.method, "path": target,
        })
        return response

    @app.teardown_request
    def _end(_exc=None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id.reset(token)
