"""What the webhook answers, decided without Flask: who is posting (or a refusal), then what
becomes of the body (stored, a duplicate, quarantined, not storable) and the answer that
says so. Two edges carry these answers, each turning an ``Answer`` into its own response:
the Flask views (``views.py``) and, for the plain webhook POST, ``direct.py``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import fastjson
from ..deadline import request_deadline
from ..pipeline.ingest import Service, quarantine_advice
from ..pipeline.parse import MissingTriggerCode, ParseError
from ..pipeline.verify import AuthError, address_allowed
from ..settings import Settings, Source
from ..store import DATA, TIMEOUT, UNAVAILABLE, StoreError

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json"
# What an exception nobody expected is answered (500), with no trace: the trace is in the log.
INTERNAL_ERROR = ("internal_error", "the service failed; the error is in its log")


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    outcome: str  # the answer's name in the access line and the request metrics
    headers: dict[str, str] = field(default_factory=dict)
    event_id: str | None = None
    trigger_code: str | None = None


def error_body(status: int, error: str, message: str, **extra: Any) -> dict[str, Any]:
    """Every error's document: ``{"error", "message", "status"}``, and what a kind of error adds."""
    return {"error": error, "message": message, "status": status, **extra}


def json_bytes(body: dict[str, Any]) -> bytes:
    """An answer's document as both edges send it: compact, ending with a newline as Flask's own."""
    return fastjson.dumps(body).encode() + b"\n"


class Refused(Exception):
    """A request turned away before its body is looked at: 400, 401, 403 or 413."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message

    def answer(self) -> Answer:
        headers = {"WWW-Authenticate": 'Bearer realm="dolibarr-webhooks"'} if self.status == 401 else {}
        return Answer(self.status, error_body(self.status, self.error, self.message),
                      {401: "auth", 403: "ip"}.get(self.status, self.error), headers)


def unreadable_body(exc: Exception) -> Refused:
    """The refusal of a body that could not be read whole, and its log line. The server's
    reader raises its own exception types: a malformed chunked encoding, a client that stalls
    or one that hangs up."""
    logger.info("could not read the request body: %s: %s", type(exc).__name__, exc)
    return Refused(400, "bad_request", "the request body could not be read whole "
                                       "(malformed chunked encoding, cut short or too slow)")


def authenticated_source(svc: Service, client: str, find_source: Callable[[], Source]) -> Source:
    """The source of this request, or ``Refused`` (401 or 403). ``find_source``: the source
    whose secret the request carries, or ``AuthError``; called only when some source has one."""
    sources = list(svc.sources.values())
    # Addresses that no source allows are refused before any credential is looked at.
    if all(s.allowed_ips for s in sources) and sources and not any(
            address_allowed(client, s.allowed_ips) for s in sources):
        raise Refused(403, "forbidden", f"address {client} is not allowed")
    if svc.settings["INSECURE_NO_AUTH"] and not any(s.secrets for s in sources):
        return sources[0]
    if not any(s.secrets for s in sources):
        raise Refused(401, "unauthorized", "no secret is configured on this service, so no event is accepted; "
                                           "set DOLIBARR_WEBHOOKS_SECRET")
    try:
        source = find_source()
    except AuthError as exc:
        raise Refused(401, "unauthorized", str(exc)) from None
    if not address_allowed(client, source.allowed_ips):
        raise Refused(403, "forbidden", f"address {client} is not allowed for source {source.name}")
    return source


def deadline_for(settings: Settings, started: float, request_start: str | None) -> float:
    """The ``time.monotonic()`` instant by which this request's event must be stored (``started``:
    when the app got it); the proxy's X-Request-Start counts only from a trusted proxy (a
    client's could only shorten it)."""
    stamp = request_start if settings["TRUSTED_PROXIES"] else None
    return request_deadline(settings["REQUEST_DEADLINE"], started, stamp)


# The answer to a store failure, by kind. A timeout is an outage to Dolibarr (try again
# later); a data error is not, and is only answered when even the raw body could not be
# kept (see accept): trying again would meet the same refusal.
_STORE_ANSWERS = {
    UNAVAILABLE: (503, "store", "store_unavailable", "the event could not be stored; try again"),
    TIMEOUT: (503, "store_timeout", "store_timeout",
              "the event could not be stored within the request deadline, so it is not stored; try again"),
    DATA: (422, "store_data", "unstorable", "the store refused this event's data; it is not stored"),
}


def _store_failed(exc: StoreError) -> Answer:
    status, reason, error, message = _STORE_ANSWERS[exc.kind]
    return Answer(status, error_body(status, error, message), reason, {"Retry-After": "5"} if status == 503 else {})


def _quarantine(svc: Service, raw: bytes, source: Source, reason: str, client: str, deadline: float) -> Answer:
    """Keep an authenticated body that cannot become a stored event; any 4xx would roll back
    the Dolibarr user's action, so: keep the body, answer 2xx, warn operators."""
    try:
        event_id = svc.quarantine(raw, source, reason, client, deadline=deadline)
    except StoreError as exc:
        return _store_failed(exc)
    return Answer(202, {"status": "quarantined", "id": event_id,
                        "warning": f"{reason}; {quarantine_advice(raw, event_id)}"}, "quarantined", event_id=event_id)


def accept(svc: Service, raw: bytes, source: Source, client: str, started: float, deadline: float,
           test: bool = False) -> Answer:
    """An authenticated body: parsed and stored, or quarantined, and the answer that says which.
    ``started``: the request's ``time.perf_counter()`` when the app got it."""
    try:
        event = svc.event_from_body(raw, source, test=test)
    except MissingTriggerCode as exc:
        return Answer(422, error_body(422, "no_trigger_code", str(exc)), "no_trigger_code")
    except ParseError as exc:
        if svc.settings["STRICT"]:
            return Answer(400, error_body(400, "bad_request", str(exc)), "parse")
        return _quarantine(svc, raw, source, str(exc), client, deadline)
    try:
        result = svc.ingest(event, remote_addr=client, deadline=deadline)
    except StoreError as exc:
        if exc.kind != DATA:
            return _store_failed(exc)
        # Not an outage: this event's data cannot go in the store's columns. The raw body can
        # (a blob holds anything), like an unparseable one's: 202, quarantined, operators warned.
        return _quarantine(svc, raw, source, f"the store refused the event ({exc})", client, deadline)
    svc.metrics.acknowledged(started)
    body = {"status": result.status, "id": event.id, "trigger_code": event.trigger_code}
    if result.duplicate_of:
        body["duplicate_of"] = result.duplicate_of
    else:
        body["deliveries"] = result.deliveries
    if event.sent_code:
        body["sent_code"] = event.sent_code
    if event.test:
        body["test"] = True
    return Answer(200, body, result.status, event_id=event.id, trigger_code=event.trigger_code)
