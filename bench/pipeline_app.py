"""The product's pipeline without its web edge, for ``bench/edge.py``: the bound of what the
Flask edge around the pipeline costs. Not a receiver.

POST /webhook/<secret> runs what the product's view runs on its way to a 200, and nothing
else: ``verify.authenticate``, ``Service.event_from_body`` (parse, scrub, identify) and
``Service.ingest`` (the same store, group commit and fsync, the event's counters), then an
orjson answer with the same fields. Left out: Flask and werkzeug's request and response
objects, the URL map, the request context and its hooks, the request id, the access line,
the answers' counters, the rate limiter, the client's address behind proxies and the
allow-lists, the request's deadline from its proxy, and every answer other than a 200
(refusals, quarantine, store failures): a request that fails anywhere gets a bare status.
Every other path goes to the product's Flask app, built here as ``create_app()``.
"""

from __future__ import annotations

import time

import orjson

from dolibarr_webhooks.pipeline.verify import AuthError, Credentials, authenticate
from dolibarr_webhooks.web.app import create_app

flask_app = create_app()
service = flask_app.extensions["dolibarr_webhooks"]
sources = list(service.sources.values())
JSON = [("Content-Type", "application/json")]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if environ["REQUEST_METHOD"] != "POST" or not path.startswith("/webhook/"):
        return flask_app(environ, start_response)
    started = time.monotonic()
    raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    try:
        source = authenticate(sources, Credentials(path_token=path[len("/webhook/"):],
                                                   authorization=environ.get("HTTP_AUTHORIZATION")), raw)
    except AuthError:
        start_response("401 UNAUTHORIZED", JSON)
        return [b"{}"]
    event = service.event_from_body(raw, source)
    result = service.ingest(event, remote_addr=environ.get("REMOTE_ADDR"),
                            deadline=started + service.settings["REQUEST_DEADLINE"])
    body = orjson.dumps({"status": result.status, "id": event.id, "trigger_code": event.trigger_code,
                         "deliveries": result.deliveries})
    start_response("200 OK", [*JSON, ("Content-Length", str(len(body)))])
    return [body]
