"""Logging: human lines by default, JSON lines on request, a request id on every line,
and no secret ever written (the secret may be in the path, the query string, the
user-info of a URL or an ``Authorization`` header). No Flask here: the worker logs
through it too; the web's access log is ``web/access_log.py``.

Two layers keep secrets out: ``redact`` rewrites the request targets we log on purpose,
and every formatter installed here passes its final text through ``scrub``, which
also removes the configured secrets wherever they appear, so a message someone adds
later cannot leak one either.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import threading
import time
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Iterable
from urllib.parse import quote, unquote, unquote_plus

from .credentials import SENSITIVE_NAME as _SENSITIVE_NAME

request_id: ContextVar[str] = ContextVar("dolibarr_webhooks_request_id", default="-")

MASK = "***"
# /webhook/<secret>, /webhook/<secret>/events, /webhook/<secret>/test; not /webhook/events or /webhook/test.
_WEBHOOK_SEGMENT = re.compile(r"(/webhook/)(?!(?:events|test)(?:[/?#\s\"']|$))[^/?#\s\"']+", re.IGNORECASE)
_USERINFO = re.compile(r"(//)[^/@\s\"']+@")
_PASSWORD = re.compile(r"(//[^/:@\s\"']*:)[^/@\s\"']+@")
_QUERY_PARAM = re.compile(r"([?&;][^=&;\s\"'#?]*(?:" + _SENSITIVE_NAME.pattern + r")[^=&;\s\"'#?]*=)[^&;\s\"'#]*",
                          re.IGNORECASE)
_AUTH_HEADER = re.compile(r"((?:authorization|x-dolibarr-signature|webhook-signature)[\"']?\s*[:=]\s*[\"']?"
                          r"(?:(?:basic|bearer|token|digest)\s+)?)[^\s\"',}]+", re.IGNORECASE)
_SAFE_PATH = "/:@!$&'()*+,;=-._~"
_MASKED_GROUP = r"\1" + MASK
_MASKED_USERINFO = r"\1" + MASK + "@"


def _redact_query(query: str) -> str:
    parts = []
    for part in query.split("&"):
        key, eq, _value = part.partition("=")
        if eq and _SENSITIVE_NAME.search(unquote_plus(key)):
            part = f"{key}={MASK}"
        parts.append(part)
    return "&".join(parts)


# Every request's access lines redact its target, and the same few come back (/webhook/<secret>):
# each is redacted once per process. Bounded: targets full of made-up tokens only miss.
@functools.lru_cache(maxsize=512)
def redact(target: str, keep_user: bool = False) -> str:
    """A request target or URL with any secret replaced by ``***``: the one URL redaction.

    The path is percent-decoded before it is matched (``/%77ebhook/<secret>`` reaches the
    same view as ``/webhook/<secret>``), then re-encoded, so what is logged is the
    normalised path with the secret masked. ``keep_user``: the URL of a database or Redis,
    whose user name an operator needs (which account?); only its password is masked.
    """
    path, sep, query = target.partition("?")
    path = (_PASSWORD if keep_user else _USERINFO).sub(_MASKED_USERINFO, path)
    path = quote(_WEBHOOK_SEGMENT.sub(_MASKED_GROUP, unquote(path)), safe=_SAFE_PATH)
    return path + sep + (_redact_query(query) if sep else "")


def mask(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of the known ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (a formatted log line, an exception) with secrets removed: webhook paths,
    credential query parameters, URL user-info, Authorization values and known secrets."""
    text = mask(text, secrets)
    # Each pattern needs a few characters that most lines lack: a regex runs only where they
    # are (a line is scrubbed for every log record, several times in a JSON one). The
    # case-insensitive ones are looked for in the lower-cased text only when it is ASCII: the
    # regex's Unicode case folding also matches the Kelvin sign to "k", the long s to "s".
    # A substitution cannot create what another looks for: it only inserts "***" and removes.
    folded = text.lower() if text.isascii() else None
    if folded is None or "/webhook/" in folded:
        text = _WEBHOOK_SEGMENT.sub(_MASKED_GROUP, text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_MASKED_GROUP, text)
    if "@" in text:
        text = _USERINFO.sub(_MASKED_USERINFO, text)
    if folded is None or "authorization" in folded or "signature" in folded:
        text = _AUTH_HEADER.sub(_MASKED_GROUP, text)
    return text


class SecretScrubber:
    """The secrets a process knows; formatters mask them wherever they show up."""

    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> None:
        # Sorted once here, not per line: longest first, so a secret that contains another
        # is masked whole.
        known = set(self.secrets).union(s for s in secrets if s and len(s) >= 8)
        self.secrets = tuple(sorted(known, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        return scrub(text, self.secrets)

    def mask(self, text: str) -> str:
        """Only the known secrets: for text that is not a log line (``check``'s findings)."""
        return mask(text, self.secrets)


def _stamped(record: logging.LogRecord) -> str:
    """The record's request id, set on it from the current request when it names none. A
    line written after its request's context ended names its request itself (the access
    line: web/access_log.py)."""
    record.request_id = getattr(record, "request_id", None) or request_id.get()
    return record.request_id


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        _stamped(record)
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = None, scrubber: SecretScrubber | None = None, **kwargs) -> None:
        super().__init__(fmt or TEXT_FORMAT, **kwargs)
        self.scrubber = scrubber or SecretScrubber()
        self._second: tuple[tuple[int, str | None], str] = ((-1, None), "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The lines of one second share their date and time: formatted once (strftime was a
        # tenth of an access line's cost), the milliseconds added to each, as logging does.
        key = (int(record.created), datefmt)
        kept, text = self._second
        if key != kept:
            text = time.strftime(datefmt or self.default_time_format, self.converter(record.created))
            self._second = (key, text)
        if datefmt or not self.default_msec_format:
            return text
        return self.default_msec_format % (text, record.msecs)

    def format(self, record: logging.LogRecord) -> str:
        _stamped(record)
        return self.scrubber(super().format(record))


# The fields of an access line, the application's (web/access_log.py) and gunicorn's
# (web/gunicorn.py), written by JsonFormatter when a record carries them.
ACCESS_FIELDS = ("status", "outcome", "trigger_code", "event_id", "source", "client", "duration_ms", "method",
                 "path", "bytes", "user_agent")


class JsonFormatter(logging.Formatter):
    def __init__(self, scrubber: SecretScrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or SecretScrubber()

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.scrubber(record.getMessage()),
            "request_id": _stamped(record),
        }
        for key in ACCESS_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                data[key] = self.scrubber(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exception"] = self.scrubber(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is written, not as it was when the app
    was created (a redirect, pytest's capsys)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def make_formatter(fmt: str = "text", scrubber: SecretScrubber | None = None) -> logging.Formatter:
    return JsonFormatter(scrubber) if fmt == "json" else TextFormatter(scrubber=scrubber)


def configure(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> SecretScrubber:
    """Set up the ``dolibarr_webhooks`` loggers once per process (idempotent); returns the
    scrubber of its handler, to which more secrets can be added."""
    logger = logging.getLogger("dolibarr_webhooks")
    logger.setLevel(level)
    scrubber = SecretScrubber()
    logger.addHandler(_our_handler(logger, make_formatter(fmt, scrubber)))
    logger.propagate = False
    # The warnings of the libraries the service drives (psycopg, SQLAlchemy's pool, a plugin's
    # HTTP client) and a thread's uncaught exception in the same lines, scrubbed, JSON when
    # asked: Python wrote them bare ("error ignored terminating <psycopg.Pipeline ...>", a
    # traceback), which broke a JSON log. Not where another logging configuration (a
    # deployer's, pytest's) gave the root logger handlers of its own.
    root = logging.getLogger()
    if not any(not getattr(handler, "_dolibarr_webhooks", False) for handler in root.handlers):
        root.addHandler(_our_handler(root, make_formatter(fmt, scrubber), logging.WARNING))
        threading.excepthook = _log_thread_failure
    scrubber.add(secrets)
    return scrubber


def _log_thread_failure(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is not SystemExit:
        logging.getLogger("dolibarr_webhooks").error(
            "thread %s stopped", args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def _our_handler(logger: logging.Logger, formatter: logging.Formatter, level: int = logging.NOTSET) -> logging.Handler:
    """The service's stderr handler for ``logger``, in place of the one an earlier app put there."""
    for handler in list(logger.handlers):
        if getattr(handler, "_dolibarr_webhooks", False):
            logger.removeHandler(handler)
    handler = StderrHandler()
    handler.setLevel(level)
    handler._dolibarr_webhooks = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    return handler
