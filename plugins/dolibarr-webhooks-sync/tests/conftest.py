"""Real HTTP servers on 127.0.0.1 for the sync plugin's tests: a Standard Webhooks receiver
that verifies signatures with the ``standardwebhooks`` library, and a server that answers
like Dolibarr's REST API."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from dolibarr_webhooks.pipeline.parse import event_from_body
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import free_port, local_http_server

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
API_KEY = "dolibarr-api-key-for-tests"


@pytest.fixture
def make_event():
    """``make_event("BILL_PAYED", **Event overrides)``: an Event from a real-shaped Dolibarr body."""

    def make(code: str, **overrides: Any):
        return event_from_body(sample_body(code), dolibarr_url="https://erp.example", **overrides)

    return make


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        # The client may have given up already: the timeout test makes it do so.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: Any = None  # what Webhook.verify returned, when the signature verified
    error: str | None = None  # why verification failed

    @property
    def verified(self) -> bool:
        return self.error is None


@dataclass
class Receiver:
    """Verifies every request with ``standardwebhooks.Webhook(secret)``; answers 401 when it fails.

    Paths choose the answer: ``/status/<code>`` (``?retry_after=`` adds Retry-After,
    ``?location=`` adds Location, ``?sleep=`` waits first); anything else answers 204.
    """

    secret: str | bytes = SECRET
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str = "/hook") -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout)
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # a web page, as a wrong Dolibarr API URL would give
            self.answer(200, b"<html><body>Login</body></html>", {"Content-Type": "text/html"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            try:
                received.payload = Webhook(state.secret).verify(body, dict(self.headers))
            except WebhookVerificationError as exc:
                received.error = str(exc)
            with state.arrived:
                state.requests.append(received)
                state.arrived.notify_all()
            if received.error:
                self.answer(401, b'{"error": "invalid signature"}', {"Content-Type": "application/json"})
                return
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if "sleep" in query:
                time.sleep(float(query["sleep"]))
            if not parts.path.startswith("/status/"):
                self.answer(204)
                return
            headers = {}
            if "retry_after" in query:
                headers["Retry-After"] = query["retry_after"]
            if "location" in query:
                headers["Location"] = query["location"]
            self.answer(int(parts.path.rsplit("/", 1)[1]), b"receiver says no", headers)

    with local_http_server(Handler) as server:
        state.server = server
        yield state


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens: connection refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


@dataclass
class FakeDolibarr:
    """Answers ``GET /api/index.php/<resource>/<id>`` like Dolibarr's REST API.

    401 without the right DOLAPIKEY; ``pending[path] = n``: 404 for the first n reads (the
    transaction has not committed yet); ``missing``: 404 forever (rolled back);
    ``failing[path] = status``: that status forever; otherwise 200 with a committed object.
    """

    key: str = API_KEY
    pending: dict[str, int] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)
    failing: dict[str, int] = field(default_factory=dict)
    hits: list[tuple[float, str, str | None]] = field(default_factory=list)  # (time, path, DOLAPIKEY)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/index.php"

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.hits]

    def answer(self, path: str, key: str | None) -> tuple[int, dict[str, Any]]:
        if key != self.key:
            return 401, {"error": {"code": 401, "message": "Unauthorized: Access denied"}}
        if path in self.failing:
            return self.failing[path], {"error": {"code": self.failing[path], "message": "Server error"}}
        if self.pending.get(path, 0) > 0:
            self.pending[path] -= 1
            return 404, {"error": {"code": 404, "message": "Not Found: Object not found"}}
        if path in self.missing:
            return 404, {"error": {"code": 404, "message": "Not Found: Object not found"}}
        resource, object_id = path.split("/")
        return 200, {"id": object_id, "ref": f"COMMITTED-{object_id}", "status": "2", "paye": "1",
                     "resource": resource, "committed": True}


@pytest.fixture
def dolibarr() -> Iterator[FakeDolibarr]:
    state = FakeDolibarr()
    prefix = "/api/index.php/"

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            path = self.path[len(prefix):] if self.path.startswith(prefix) else self.path
            key = self.headers.get("DOLAPIKEY")
            state.hits.append((time.monotonic(), path, key))
            status, body = state.answer(path, key)
            self.answer(status, json.dumps(body).encode(), {"Content-Type": "application/json"})

    with local_http_server(Handler) as server:
        state.server = server
        yield state


@pytest.fixture
def sync_config(receiver: Receiver) -> Callable[..., dict[str, Any]]:
    """``sync_config(path="/hook", **more)``: the plugin's config dict for one endpoint at the receiver."""

    def make(path: str = "/hook", **more: Any) -> dict[str, Any]:
        return {"url": receiver.url(path), "secret": SECRET, **more}

    return make


@pytest.fixture
def secret() -> str:
    """The signing secret the receiver verifies with (``whsec_`` form)."""
    return SECRET
