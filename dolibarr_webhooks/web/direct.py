"""The plain webhook POST, answered in WSGI: what Dolibarr sends, every time, without Flask's
request and response objects, URL map, contexts and hooks around it.

Flask's edge was a third of a webhook request's CPU (bench/edge.py, issue #15) while the
answer is decided elsewhere: ``answers.py`` decides it for both edges, from the same body,
credentials, client address and deadline. This one adds only what Flask's hooks add to a
webhook answer: the request id (``X-Request-Id``, and on every log line of the request),
the access line once the answer is sent, and the answers' counters.

It takes ``POST /webhook/<secret>`` with a ``Content-Length`` within the limit, no query
string and no ``Transfer-Encoding``, when no rate limit is set. Anything else goes to the
Flask app untouched, before a byte of the body is read: ``/webhook`` with a token in the
query or a header, ``/webhook/test``, chunked bodies, a body over the limit (413), other
methods and paths, and every request when a limit is set (Flask-Limiter counts in Flask's
hooks).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Mapping

from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import ClientDisconnected
from werkzeug.http import HTTP_STATUS_CODES

from ..deadline import REQUEST_START_HEADER
from ..logs import request_id
from ..pipeline.ingest import Service
from ..pipeline.verify import Credentials, authenticate, client_address
from .access_log import REQUEST_ID_HEADER, request_id_for, write_access_line
from .answers import (INTERNAL_ERROR, JSON_TYPE, Answer, Refused, accept, authenticated_source, deadline_for,
                      error_body, json_bytes, unreadable_body)

logger = logging.getLogger(__name__)

PREFIX = "/webhook/"
# /webhook/events and /webhook/test are routes of their own; any other segment is a secret.
_ROUTES = frozenset({"events", "test"})
_REQUEST_START_KEY = "HTTP_" + REQUEST_START_HEADER.upper().replace("-", "_")
_REQUEST_ID_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")


def _status_line(status: int) -> str:
    return f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}"  # as werkzeug writes it


class _Answered(list):
    """The answer's one chunk. The server closes it after its last byte: the access line is
    written then, off the client's wait, as Flask's edge writes it (access_log.py)."""

    __slots__ = ("on_close",)

    def close(self) -> None:
        self.on_close()


class DirectWebhook:
    """WSGI middleware: the plain webhook POST here, everything else to ``app``."""

    def __init__(self, app: Callable, service: Service, config: Mapping[str, Any]) -> None:
        self.app = app
        self.service = service
        self.config = config  # the Flask app's: its MAX_CONTENT_LENGTH, as Flask reads it for each request

    def _secret_and_length(self, environ: dict) -> tuple[str, int] | None:
        """The token and body length of a plain webhook POST, or None for Flask."""
        path = environ.get("PATH_INFO", "")
        if (environ["REQUEST_METHOD"] != "POST" or not path.startswith(PREFIX) or environ.get("QUERY_STRING")
                or "HTTP_TRANSFER_ENCODING" in environ):
            return None
        token = path[len(PREFIX):]
        # A secret is ASCII (WSGI's PATH_INFO is Latin-1; werkzeug decodes it as UTF-8 for the view).
        if not token or "/" in token or token in _ROUTES or not token.isascii():
            return None
        length = environ.get("CONTENT_LENGTH", "")
        limit = self.config["MAX_CONTENT_LENGTH"]
        if not (length.isascii() and length.isdigit()) or (limit is not None and int(length) > limit):
            return None
        return token, int(length)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        plain = self._secret_and_length(environ)
        if plain is None:
            return self.app(environ, start_response)
        token, length = plain
        started = time.perf_counter()
        rid = request_id_for(environ.get(_REQUEST_ID_KEY))
        rid_token = request_id.set(rid)
        svc = self.service
        client = client_address(environ.get("REMOTE_ADDR"), environ.get("HTTP_X_FORWARDED_FOR"),
                                svc.settings["TRUSTED_PROXIES"])
        source_name = None
        try:
            try:
                raw = self._body(environ, length)
                source = authenticated_source(svc, client, lambda: authenticate(
                    svc.sources.values(), Credentials.from_headers(EnvironHeaders(environ), path_token=token), raw))
            except Refused as exc:
                answer = exc.answer()
            else:
                source_name = source.name
                deadline = deadline_for(svc.settings, started, environ.get(_REQUEST_START_KEY))
                answer = accept(svc, raw, source, client, started, deadline)
        except Exception:
            logger.exception("unexpected error on POST webhooks.receive")
            answer = Answer(500, error_body(500, *INTERNAL_ERROR), INTERNAL_ERROR[0])
        finally:
            request_id.reset(rid_token)
        svc.metrics.request(answer.status, answer.outcome)
        body = json_bytes(answer.body)
        start_response(_status_line(answer.status), [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body))),
                                                     *answer.headers.items(), (REQUEST_ID_HEADER, rid)])
        sent = _Answered((body,))
        sent.on_close = lambda: write_access_line(
            rid, started, "POST", environ["PATH_INFO"], answer.status, answer.outcome, answer.trigger_code,
            answer.event_id, source_name, client)
        return sent

    @staticmethod
    def _body(environ: dict, length: int) -> bytes:
        try:
            raw = environ["wsgi.input"].read(length)
            if len(raw) < length:
                raise ClientDisconnected()
        except Exception as exc:  # the server's reader: its exception types are its own
            raise unreadable_body(exc) from None
        return raw
