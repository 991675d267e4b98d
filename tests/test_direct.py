"""The plain webhook POST, answered in WSGI (web/direct.py): taken only for what Dolibarr
sends, and answered as Flask's view answers the same request (web/answers.py decides for
both). A query string sends a request the Flask way: the comparisons use one that means
nothing to the service."""

from __future__ import annotations

import json
import re

import pytest
from flask import request, request_started

from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET

URL = f"/webhook/{SECRET}"
VIA_FLASK = "?via=flask"
_IDS = re.compile(r"evt_[0-9a-f]+")  # event ids, in answers and access lines


@pytest.fixture
def flask_handled(webhooks_app):
    """The paths of the requests that went through Flask's request handling."""
    seen: list[str] = []

    def record(_sender, **_extra):
        seen.append(request.full_path.rstrip("?"))

    request_started.connect(record, webhooks_app)
    yield seen
    request_started.disconnect(record, webhooks_app)


def _body(object_id: int, sent_code: str = "BILL_VALIDATE") -> bytes:
    data = json.loads(sample_body("BILL_VALIDATE"))
    data["object"]["id"] = object_id
    data["triggercode"] = sent_code
    return json.dumps(data).encode()


def test_only_the_plain_post_bypasses_flask(webhooks_client, flask_handled):
    assert webhooks_client.post(URL, data=_body(1)).status_code == 200
    assert webhooks_client.post(URL, data=b"{not json").status_code == 202
    assert webhooks_client.post("/webhook/wrong-secret-0123456789", data=_body(2)).status_code == 401
    assert flask_handled == []

    others = [
        (URL + VIA_FLASK, {}),
        ("/webhook", {"Authorization": f"Bearer {SECRET}"}),
        (f"/webhook?token={SECRET}", {}),
        ("/webhook/test", {"Authorization": f"Bearer {SECRET}"}),
        (f"{URL}/test", {}),
        ("/webhook/events", {"Authorization": f"Bearer {SECRET}"}),
    ]
    for number, (path, headers) in enumerate(others, start=3):
        assert webhooks_client.post(path, data=_body(number), headers=headers).status_code in (200, 405)
    assert flask_handled == [path for path, _headers in others]
    assert webhooks_client.get(URL).status_code == 405
    assert flask_handled[-1] == URL


@pytest.mark.parametrize("webhooks_config", [{"MAX_BODY_SIZE": "1k"}])
def test_a_body_over_the_limit_is_flask_s_413(webhooks_client, flask_handled):
    response = webhooks_client.post(URL, data=_body(1))
    assert response.status_code == 413 and response.json["error"] == "request_entity_too_large"
    assert flask_handled == [URL]


@pytest.mark.parametrize("webhooks_config", [{"RATELIMIT": "1000/minute"}])
def test_with_a_rate_limit_every_request_is_flask_s(webhooks_client, flask_handled):
    response = webhooks_client.post(URL, data=_body(1))
    assert response.status_code == 200 and "X-RateLimit-Limit" in response.headers
    assert flask_handled == [URL]


def _access_lines(text: str) -> list[str]:
    """The access lines of ``text`` without what differs by request: ids, duration, query."""
    lines = [line.split("dolibarr_webhooks.access: ", 1)[1] for line in text.splitlines()
             if "dolibarr_webhooks.access: " in line]
    return [re.sub(r" [\d.]+ms ", " <ms> ", _IDS.sub("<id>", line.replace(VIA_FLASK, ""))) for line in lines]


def _answer(response) -> tuple:
    body = json.loads(_IDS.sub("<id>", response.get_data(as_text=True)))
    headers = {name: value for name, value in response.headers.items() if name != "X-Request-Id"}
    return response.status_code, body, headers, bool(re.fullmatch(r"[0-9a-f]{16}", response.headers["X-Request-Id"]))


def _twice(client, capsys, post) -> tuple:
    """``post(suffix, number)`` the plain way and the Flask way: answers and access lines."""
    capsys.readouterr()
    direct = [_answer(response) for response in post("", 0)]
    direct_lines = _access_lines(capsys.readouterr().err)
    through_flask = [_answer(response) for response in post(VIA_FLASK, 1000)]
    flask_lines = _access_lines(capsys.readouterr().err)
    return direct, direct_lines, through_flask, flask_lines


TEST_BODY = b'{"triggercode": "TEST_TRIGGER_CODE", "object": {"id": %d}}'
CASES = {
    "stored": lambda c, suffix, n: [c.post(URL + suffix, data=_body(n + 1))],
    "duplicate": lambda c, suffix, n: [c.post(URL + suffix, data=_body(n + 2)) for _ in range(2)],
    "alias": lambda c, suffix, n: [c.post(URL + suffix, data=_body(n + 3, "INVOICE_VALIDATE"))],
    "test code": lambda c, suffix, n: [c.post(URL + suffix, data=TEST_BODY % n)],
    "wrong secret": lambda c, suffix, n: [c.post(f"/webhook/not-the-secret-0123456789{suffix}", data=_body(n + 4))],
    "unparseable": lambda c, suffix, n: [c.post(URL + suffix, data=b"{not json")],
    "empty": lambda c, suffix, n: [c.post(URL + suffix, data=b"")],
    "no trigger code": lambda c, suffix, n: [c.post(URL + suffix, data=b'{"object": {}}')],
    "X-Request-Id": lambda c, suffix, n: [c.post(URL + suffix, data=_body(n + 5), headers={"X-Request-Id": "abc.123"})],
}


@pytest.mark.parametrize("case", CASES)
def test_the_same_answers_and_lines_both_ways(webhooks_client, capsys, case):
    direct, direct_lines, through_flask, flask_lines = _twice(
        webhooks_client, capsys, lambda suffix, n: CASES[case](webhooks_client, suffix, n))
    if case == "X-Request-Id":
        assert direct[0][3] is False  # nginx's id is kept, and sent back
    assert direct == through_flask
    assert direct_lines == flask_lines and len(direct_lines) == len(direct)


@pytest.mark.parametrize("webhooks_config", [{"STRICT": True}, {"ALLOWED_IPS": "192.0.2.0/24"}])
def test_the_same_refusals_both_ways(webhooks_client, capsys):
    direct, direct_lines, through_flask, flask_lines = _twice(
        webhooks_client, capsys, lambda suffix, n: [webhooks_client.post(URL + suffix, data=b"{not json")])
    assert direct[0][0] in (400, 403)
    assert direct == through_flask and direct_lines == flask_lines


def test_an_answer_carries_its_request_id(webhooks_client):
    kept = webhooks_client.post(URL, data=_body(1), headers={"X-Request-Id": "nginx-id.42"})
    assert kept.headers["X-Request-Id"] == "nginx-id.42"
    replaced = webhooks_client.post(URL, data=_body(2), headers={"X-Request-Id": "no spaces; or semicolons"})
    assert re.fullmatch(r"[0-9a-f]{16}", replaced.headers["X-Request-Id"])


def test_a_body_cut_short_is_400(webhooks_client, caplog):
    """Fewer bytes than Content-Length says: the client hung up, nothing is stored."""
    body = _body(1)
    response = webhooks_client.post(URL, data=body[:100], environ_overrides={"CONTENT_LENGTH": str(len(body))})
    assert response.status_code == 400 and response.json["error"] == "bad_request"
    assert "could not read the request body" in caplog.text


@pytest.mark.parametrize("length", ["1e3", "\u00b2", " 12", "-1"])
def test_an_odd_content_length_is_flask_s(webhooks_client, flask_handled, length):
    response = webhooks_client.post(URL, data=_body(1), environ_overrides={"CONTENT_LENGTH": length})
    assert flask_handled == [URL] and response.status_code < 500
