"""The web's side of logging: a request id for every request (shared with nginx), and one
access line per request with its outcome, trigger code and event id, the target redacted."""

from __future__ import annotations

import functools
import logging
import re
import time

from flask import Flask, g, request
from flask.testing import FlaskClient

from ..ids import random_hex
from ..logs import configure, redact, request_id
from ..settings import Settings

access_logger = logging.getLogger("dolibarr_webhooks.access")

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NOT_LOGGED = frozenset({"/health", "/metrics", "/ready"})  # probes: a line each would drown the rest
_ACCESS_KEYS = ("outcome", "trigger_code", "event_id", "source")  # what the request's handling noted on g
ACCESS_LEVEL = logging.INFO  # a level above it (DOLIBARR_WEBHOOKS_LOG_LEVEL) hides the access lines


def writes_access_lines(level: str) -> bool:
    """Whether the application writes its access lines at this log level (``warning``, ``INFO``...):
    contrib/gunicorn.conf.py turns gunicorn's own on only where it does not."""
    return logging.getLevelName(level.upper()) <= ACCESS_LEVEL


def request_id_for(incoming: str | None) -> str:
    """A request's id: the one nginx sends (its $request_id, so that both logs share it), or a
    new one when there is none or it looks odd."""
    return incoming if incoming and _VALID_REQUEST_ID.fullmatch(incoming) else random_hex()


def write_access_line(rid: str | None, started: float | None, method: str, full_path: str, status: int,
                      outcome: str | None, trigger_code: str | None, event_id: str | None, source: str | None,
                      client: str | None) -> None:
    """One request's access line; ``started``: its ``time.perf_counter()`` at the first hook."""
    if not access_logger.isEnabledFor(ACCESS_LEVEL):
        return  # above the level (warning...): nothing to redact or format
    now = time.perf_counter()
    duration = (now - (started or now)) * 1000
    target = redact(full_path.rstrip("?"))
    parts = [f"{method} {target} {status}"]
    parts.extend(str(value) for value in (outcome, trigger_code, event_id, source) if value)
    # Logger.log would look for its caller's file and line on the stack: the line names
    # none, and the search was a tenth of the line's cost.
    access_logger.handle(access_logger.makeRecord(
        access_logger.name, ACCESS_LEVEL, __file__, 0, "%s %.1fms from %s",
        (" ".join(parts), duration, client), None, extra={
            "request_id": rid, "status": status, "outcome": outcome, "trigger_code": trigger_code,
            "event_id": event_id, "source": source, "client": client, "duration_ms": round(duration, 2),
            "method": method, "path": target,
        }))


class ClosingTestClient(FlaskClient):
    """Flask's test client, closing each response once it is read, as a WSGI server does after
    its last byte: the access line is written then, under tests too."""

    def open(self, *args, buffered: bool = True, **kwargs):
        return super().open(*args, buffered=buffered, **kwargs)


def init_app(app: Flask, settings: Settings) -> None:
    """Logs at the settings' level and format; ``Settings.sensitive_values`` (every source's
    secrets, TOML sources included, the metrics token and the plugins' credentials) are masked
    in every line."""
    configure(settings["LOG_LEVEL"], settings["LOG_FORMAT"], settings.sensitive_values)
    app.test_client_class = ClosingTestClient

    @app.before_request
    def _begin() -> None:
        ctx = g._get_current_object()
        ctx.request_started = time.perf_counter()
        rid = ctx.request_id = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        ctx.request_id_token = request_id.set(rid)

    @app.after_request
    def _access_log(response):
        ctx, req = g._get_current_object(), request._get_current_object()
        rid = ctx.get("request_id")
        if rid:
            response.headers[REQUEST_ID_HEADER] = rid
        if req.path in _NOT_LOGGED:
            return response
        # Written once the answer is sent: the WSGI server closes the response after its last
        # byte (gunicorn, werkzeug's server). Formatting and writing the line were a tenth of a
        # request's Python time, on the client's wait until then (issue #15).
        response.call_on_close(functools.partial(
            write_access_line, rid, ctx.get("request_started"), req.method, req.full_path, response.status_code,
            *(ctx.get(key) for key in _ACCESS_KEYS), ctx.get("client") or req.remote_addr))
        return response

    @app.teardown_request
    def _end(_exc=None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            request_id.reset(token)
