"""The HTTP edge: authenticate, check the address, read the raw body, turn it into an
``Event`` and hand it to the service. Answers in milliseconds; the work happens later."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, g, jsonify, request

from ..deadline import REQUEST_START_HEADER, request_deadline as deadline_at
from ..listing import event_rows, plugin_rows
from ..pipeline.ingest import Service, quarantine_advice
from ..pipeline.parse import MissingTriggerCode, ParseError
from ..pipeline.verify import AuthError, address_allowed
from ..samples import sample_body
from ..settings import Source
from ..store import DATA, TIMEOUT, UNAVAILABLE, StoreError
from .errors import json_error, record_outcome
from .request import Refused, request_body, request_client, request_source, service

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)


def _authenticated_source(token: str | None, body: bytes) -> Source:
    """The source of this request, or ``Refused`` (401 or 403)."""
    svc = service()
    sources = list(svc.sources.values())
    client = request_client()
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
        source = request_source(token, body)
    except AuthError as exc:
        raise Refused(401, "unauthorized", str(exc)) from None
    if not address_allowed(client, source.allowed_ips):
        raise Refused(403, "forbidden", f"address {client} is not allowed for source {source.name}")
    g.source = source.name
    return source


def _refusal(exc: Refused):
    record_outcome(exc.status, {401: "auth", 403: "ip"}.get(exc.status, exc.error))
    response = json_error(exc.status, exc.error, exc.message)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="dolibarr-webhooks"'
    return response


@bp.post("/webhook")
@bp.post("/webhook/<token>")
def receive(token: str | None = None):
    """Dolibarr's target URL."""
    try:
        raw = request_body()
        source = _authenticated_source(token, raw)
    except Refused as exc:
        return _refusal(exc)
    return _accept(raw, source, test=False)


def request_deadline(svc: Service, started: float) -> float:
    """The ``time.monotonic()`` instant by which this request's event must be stored (``started``:
    when the app got it); the proxy's X-Request-Start counts only from a trusted proxy (a
    client's could only shorten it)."""
    settings = svc.settings
    stamp = request.headers.get(REQUEST_START_HEADER) if settings["TRUSTED_PROXIES"] else None
    return deadline_at(settings["REQUEST_DEADLINE"], started, stamp)


# The answer to a store failure, by kind. A timeout is an outage to Dolibarr (try again
# later); a data error is not, and is only answered when even the raw body could not be
# kept (see _accept): trying again would meet the same refusal.
_STORE_ANSWERS = {
    UNAVAILABLE: (503, "store", "store_unavailable", "the event could not be stored; try again"),
    TIMEOUT: (503, "store_timeout", "store_timeout",
              "the event could not be stored within the request deadline, so it is not stored; try again"),
    DATA: (422, "store_data", "unstorable", "the store refused this event's data; it is not stored"),
}


def _store_failed(exc: StoreError):
    status, reason, error, message = _STORE_ANSWERS[exc.kind]
    record_outcome(status, reason)
    response = json_error(status, error, message)
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _quarantine(raw: bytes, source: Source, reason: str, deadline: float):
    """Keep an authenticated body that cannot become a stored event; any 4xx would roll back
    the Dolibarr user's action, so: keep the body, answer 2xx, warn operators."""
    try:
        event_id = service().quarantine(raw, source, reason, request_client(), deadline=deadline)
    except StoreError as exc:
        return _store_failed(exc)
    record_outcome(202, "quarantined")
    g.event_id = event_id
    return jsonify({"status": "quarantined", "id": event_id,
                    "warning": f"{reason}; {quarantine_advice(raw, event_id)}"}), 202


def _accept(raw: bytes, source: Source, test: bool):
    svc, ctx = service(), g._get_current_object()
    started = ctx.request_started  # set for every request by access_log.init_app
    deadline = request_deadline(svc, started)
    try:
        event = svc.event_from_body(raw, source, test=test)
    except MissingTriggerCode as exc:
        record_outcome(422, "no_trigger_code")
        return json_error(422, "no_trigger_code", str(exc))
    except ParseError as exc:
        if svc.settings["STRICT"]:
            record_outcome(400, "parse")
            return json_error(400, "bad_request", str(exc))
        return _quarantine(raw, source, str(exc), deadline)
    try:
        result = svc.ingest(event, remote_addr=request_client(), deadline=deadline)
    except StoreError as exc:
        if exc.kind != DATA:
            return _store_failed(exc)
        # Not an outage: this event's data cannot go in the store's columns. The raw body can
        # (a blob holds anything), like an unparseable one's: 202, quarantined, operators warned.
        return _quarantine(raw, source, f"the store refused the event ({exc})", deadline)
    record_outcome(200, result.status)
    ctx.event_id, ctx.trigger_code = event.id, event.trigger_code
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
    return jsonify(body), 200


@bp.get("/webhook/events")
@bp.get("/webhook/<token>/events")
def registered_events(token: str | None = None):
    """Registered events and the plugins that handle each."""
    try:
        _authenticated_source(token, b"")
    except Refused as exc:
        return _refusal(exc)
    plugins = service().plugins
    return jsonify({"events": event_rows(plugins), "plugins": plugin_rows(plugins)})


@bp.post("/webhook/test")
@bp.post("/webhook/<token>/test")
def test_event(token: str | None = None):
    """An event through the whole pipeline, marked as a test (the sample test body when none is sent)."""
    try:
        raw = request_body()
        source = _authenticated_source(token, raw)
    except Refused as exc:
        return _refusal(exc)
    return _accept(raw if raw.strip() else sample_body("TEST_TRIGGER_CODE"), source, test=True)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
