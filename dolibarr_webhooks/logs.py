"""Logging: human lines by default, JSON lines on request, a request id on every line,
and no secret ever written (the secret may be in the path or the query string)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone

from flask import Flask, g, request

request_id: ContextVar[str] = ContextVar("dolibarr_webhooks_request_id", default="-")

_SECRET_IN_PATH = re.compile(r"^(/webhook/)(?!events$|test$)([^/?]+)")
_SECRET_IN_QUERY = re.compile(r"((?:^|[?&])(?:token|secret)=)[^&]*", re.IGNORECASE)
_SECRET_IN_USERINFO = re.compile(r"(//[^/@:]*:)[^/@]*@")


def redact(target: str) -> str:
    """A request target or URL with any secret replaced by ``***``."""
    path, sep, query = target.partition("?")
    path = _SECRET_IN_USERINFO.sub(r"\1***@", path)
    path = re.sub(r"(/webhook/)(?!events(?:/|$)|test(?:/|$))[^/?]+", r"\1***", path)
    if sep:
        query = _SECRET_IN_QUERY.sub(r"\1***", "?" + query)[1:]
    return path + sep + query


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key in ("status", "outcome", "trigger_code", "event_id", "source", "client", "duration_ms",
                    "method", "path"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Set up the ``dolibarr_webhooks`` loggers once per process (idempotent)."""
    logger = logging.getLogger("dolibarr_webhooks")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_dolibarr_webhooks", False):
            logger.removeHandler(handler)
    handler = StderrHandler()
    handler._dolibarr_webhooks = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logger.addHandler(handler)
    logger.propagate = False


access_logger = logging.getLogger("dolibarr_webhooks.access")


def init_app(app: Flask) -> None:
    configure(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])

    @app.before_request
    def _begin() -> None:
        g.request_started = time.perf_counter()
        incoming = request.headers.get("X-Request-Id", "")
        rid = incoming if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", incoming) else uuid.uuid4().hex[:16]
        g.request_id = rid
        g.request_id_token = request_id.set(rid)

    @app.after_request
    def _access_log(response):
        rid = g.get("request_id")
        if rid:
            response.headers["X-Request-Id"] = rid
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
