"""A real HTTP server that answers as Slack's incoming-webhook endpoint does, and event builders."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from dolibarr_webhooks import Event
from dolibarr_webhooks.testing import free_port, local_http_server, wait_for

# The plugin is one module beside tests/: import it from the source tree when it is not
# pip-installed, rather than installing it into the environment the core's tests share.
PLUGIN_DIR = Path(__file__).resolve().parents[1]
if str(PLUGIN_DIR) not in sys.path:
    sys.path.insert(0, str(PLUGIN_DIR))


# The last path segment of the webhook URL picks Slack's answer: (status, body, headers).
ANSWERS: dict[str, tuple[int, str, dict[str, str]]] = {
    "ok": (200, "ok", {}),
    "invalid_payload": (400, "invalid_payload", {}),
    "invalid_token": (403, "invalid_token", {}),
    "no_service": (404, "no_service", {}),
    "channel_is_archived": (410, "channel_is_archived", {}),
    "rate_limited": (429, "rate_limited", {"Retry-After": "7"}),
    "server_error": (500, "internal_error", {}),
    "unavailable": (503, "service_unavailable", {"Retry-After": "3"}),
}
SLOW_SECONDS = 1.5


def block_kit_errors(payload: Any) -> list[str]:
    """What Slack would reject with ``400 invalid_blocks`` / ``no_text`` (the limits we rely on)."""
    if not isinstance(payload, dict):
        return ["invalid_payload"]
    blocks = payload.get("blocks")
    if not payload.get("text") and not blocks:
        return ["no_text"]
    errors: list[str] = []
    if blocks is None:
        return errors
    if not isinstance(blocks, list) or len(blocks) > 50:
        return ["blocks must be a list of at most 50"]

    def text_object(obj: Any, where: str, kinds: tuple[str, ...], limit: int) -> None:
        if not isinstance(obj, dict) or obj.get("type") not in kinds:
            errors.append(f"{where}: must be a text object of type {kinds}")
        elif not isinstance(obj.get("text"), str) or not 1 <= len(obj["text"]) <= limit:
            errors.append(f"{where}: text must have 1 to {limit} characters")

    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        where = f"blocks[{i}] ({kind})"
        if kind == "header":
            text_object(block.get("text"), where, ("plain_text",), 150)
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                errors.append(f"{where}: needs text or fields")
            if "text" in block:
                text_object(block["text"], where + ".text", ("plain_text", "mrkdwn"), 3000)
            fields = block.get("fields", [])
            if not isinstance(fields, list) or len(fields) > 10:
                errors.append(f"{where}: at most 10 fields")
            else:
                for j, f in enumerate(fields):
                    text_object(f, f"{where}.fields[{j}]", ("plain_text", "mrkdwn"), 2000)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                errors.append(f"{where}: 1 to 25 elements")
                continue
            for j, element in enumerate(elements):
                if element.get("type") != "button":
                    errors.append(f"{where}.elements[{j}]: not a button")
                    continue
                text_object(element.get("text"), f"{where}.elements[{j}].text", ("plain_text",), 75)
                url = element.get("url", "")
                if not (isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) <= 3000):
                    errors.append(f"{where}.elements[{j}]: bad url")
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                errors.append(f"{where}: 1 to 10 elements")
            else:
                for j, element in enumerate(elements):
                    text_object(element, f"{where}.elements[{j}]", ("plain_text", "mrkdwn"), 3000)
        else:
            errors.append(f"{where}: unknown block type")
    return errors


@dataclass
class FakeSlack:
    """Records what was posted: ``requests`` holds ``{"path", "headers", "json"}`` dicts."""

    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, answer: str = "ok", channel: str = "B000SALES") -> str:
        """A webhook URL shaped like Slack's; the last segment chooses the answer."""
        return f"{self.base}/services/T000TEAM/{channel}/{answer}"

    def posted(self, channel: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if channel is None or f"/{channel}/" in r["path"]]

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        return wait_for(lambda: len(self.posted()) >= count and self.posted(), timeout,
                        message=lambda: f"Slack got {len(self.posted())} requests, expected {count}")


def _handler(slack: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            with slack.lock:
                slack.requests.append({"path": self.path, "headers": dict(self.headers), "json": payload})
            answer = self.path.rstrip("/").rsplit("/", 1)[-1]
            if answer == "slow":
                time.sleep(SLOW_SECONDS)
                answer = "ok"
            status, body, headers = ANSWERS.get(answer, (404, "no_service", {}))
            if status == 200:
                errors = block_kit_errors(payload)
                if not self.headers.get("Content-Type", "").startswith("application/json"):
                    errors.append("invalid_payload")
                if errors:
                    status, body = 400, "invalid_blocks: " + "; ".join(errors)
            data = body.encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test); nothing to answer to

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep test output quiet

    return Handler


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with local_http_server(BaseHTTPRequestHandler) as server:
        fake = FakeSlack(server)
        server.RequestHandlerClass = _handler(fake)  # the handler answers from the fake's state
        yield fake


@pytest.fixture
def closed_port_url() -> str:
    """A webhook URL on a loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/services/T000TEAM/B000SALES/gone"


@pytest.fixture
def make_event(dolibarr_event) -> Callable[..., Event]:
    """``make_event("BILL_PAYED", name="x")``: the core's sample-body factory, object keys overridden."""
    return dolibarr_event
