"""The HTTP edge in Flask: read the raw body, authenticate, check the address, and answer
what ``answers.py`` decides. Answers in milliseconds; the work happens later."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from ..deadline import REQUEST_START_HEADER
from ..listing import event_rows, plugin_rows
from ..pipeline.parse import is_empty_body
from ..samples import sample_body
from ..settings import Source
from .answers import JSON_TYPE, Answer, Refused, accept, authenticated_source, deadline_for, json_bytes
from .errors import record_outcome
from .request import request_body, request_client, request_source, service

bp = Blueprint("webhooks", __name__)


def _authenticated_source(token: str | None, body: bytes) -> Source:
    """The source of this request, or ``Refused`` (401 or 403)."""
    source = authenticated_source(service(), request_client(), lambda: request_source(token, body))
    g.source = source.name
    return source


def respond(answer: Answer) -> Response:
    """The Flask response of an ``Answer``, counted and named for the access line."""
    record_outcome(answer.status, answer.outcome)
    ctx = g._get_current_object()
    if answer.event_id:
        ctx.event_id = answer.event_id
    if answer.trigger_code:
        ctx.trigger_code = answer.trigger_code
    return current_app.response_class(json_bytes(answer.body), answer.status, answer.headers, mimetype=JSON_TYPE)


@bp.post("/webhook")
@bp.post("/webhook/<token>")
def receive(token: str | None = None):
    """Dolibarr's target URL. The plain POST to /webhook/<secret> takes ``direct.py``'s way to
    the same answers; this view has every other form (a query string, chunked, a limit set)."""
    try:
        raw = request_body()
        source = _authenticated_source(token, raw)
    except Refused as exc:
        return respond(exc.answer())
    return _accept(raw, source, test=False)


def _accept(raw: bytes, source: Source, test: bool):
    svc = service()
    started = g.request_started  # set for every request by access_log.init_app
    deadline = deadline_for(svc.settings, started, request.headers.get(REQUEST_START_HEADER))
    return respond(accept(svc, raw, source, request_client(), started, deadline, test=test))


@bp.get("/webhook/events")
@bp.get("/webhook/<token>/events")
def registered_events(token: str | None = None):
    """Registered events and the plugins that handle each."""
    try:
        _authenticated_source(token, b"")
    except Refused as exc:
        return respond(exc.answer())
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
        return respond(exc.answer())
    return _accept(sample_body("TEST_TRIGGER_CODE") if is_empty_body(raw) else raw, source, test=True)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
