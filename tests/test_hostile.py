"""Hostile input: whatever an authenticated (or not) client sends, the answer is JSON with
a status below 500, and what is answered 2xx is stored.

The first tests go through the application on SQLite and PostgreSQL (conftest's
``database_url``); the last ones send raw bytes to real gunicorn with the contrib settings,
directly and through the contrib nginx.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from dolibarr_webhooks.fastjson import MAX_DEPTH
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import RunningService, free_port, running_service, wait_for_port
from dolibarr_webhooks_testplugin import command, dashboard_login, handler_config
from hostile_helpers import Answer, Hostile, hostile_requests, mutated_bodies, send, slowloris
from production_helpers import production_env, require_tool, running_nginx, service_logs

URL = f"/webhook/{SECRET}"


def nested(depth: int) -> bytes:
    """A BILL_PAYED body whose object holds lists ``depth`` levels deep, counting the body itself."""
    inner = depth - 2  # the body is level 1, the object level 2
    return b'{"triggercode":"BILL_PAYED","object":{"lines":' + b"[" * inner + b"1" + b"]" * inner + b"}}"


def stored(app, event_id):
    return app.extensions["dolibarr_webhooks"].store.show(event_id)


def test_lone_surrogates_are_stored_as_sent(webhooks_app, webhooks_client, deliver):
    # PHP never writes a lone surrogate; json decodes one, and no database takes it as text.
    body = b'{"triggercode":"BILL_PAYED","object":{"id":7,"ref":"FA\\ud800","note":"a\\udfffb","\\udc00":[1]}}'
    response = webhooks_client.post(URL, data=body)
    assert response.status_code == 200, response.json
    row = stored(webhooks_app, response.json["id"])
    assert row["status"] == "accepted"
    assert row["payload"]["object"] == json.loads(body)["object"], "the object is kept losslessly"
    assert row["ref"] == "FA\\ud800", "a column holds the escape"
    assert deliver(webhooks_app)["deliveries"]["delivered"] == 1


def test_a_lone_surrogate_in_the_trigger_code(webhooks_app, webhooks_client):
    response = webhooks_client.post(URL, data=b'{"triggercode":"BILL_PAYED\\ud800","object":{}}')
    assert response.status_code == 200, response.json
    assert stored(webhooks_app, response.json["id"])["sent_code"] == "BILL_PAYED\\ud800"


def test_nesting_as_deep_as_php_writes_is_stored(webhooks_app, webhooks_client, deliver):
    response = webhooks_client.post(URL, data=nested(MAX_DEPTH))
    assert response.status_code == 200, response.json
    assert stored(webhooks_app, response.json["id"])["payload"]["object"] == json.loads(nested(MAX_DEPTH))["object"]
    assert deliver(webhooks_app)["deliveries"]["delivered"] == 1


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deeper_nesting_is_quarantined(webhooks_app, webhooks_client, depth):
    response = webhooks_client.post(URL, data=nested(depth))
    assert response.status_code == 202 and response.json["status"] == "quarantined", response.json
    row = stored(webhooks_app, response.json["id"])
    assert row["status"] == "quarantined" and row["raw_body_size"] == len(nested(depth))


@pytest.mark.parametrize("seed", [1, 2])
def test_mutated_dolibarr_bodies_are_answered_kept_shown_and_delivered(make_app, tmp_path, deliver, seed):
    """Dolibarr's bodies with odd values put in (hostile_helpers.mutated_bodies): each answer
    is JSON below 500; what got a 2xx is stored, goes through the worker, and shows on the
    dashboard and in ``show --json``. Such bodies found a 500 on the event page, a
    traceback from ``show --json`` and a dashboard search that PostgreSQL refused."""
    app = make_app(handler_config(tmp_path, recorder=True), ADMIN_PASSWORD="fuzz-password-0123", DEDUP_WINDOW="0s")
    client = app.test_client()
    kept = {}
    for body in mutated_bodies(120, seed):
        response = client.post(URL, data=body)
        assert response.status_code < 500 and response.is_json, (body[:300], response.data[:300])
        if response.status_code < 300:
            kept[response.json["id"]] = body
    assert len(kept) > 80
    stats = deliver(app)
    assert stats["deliveries"]["failed"] == stats["deliveries"]["dead"] == 0, stats
    assert dashboard_login(client, "fuzz-password-0123").status_code == 302
    for path in ("/admin/", "/admin/events", "/admin/failures", "/admin/quarantine"):
        assert client.get(path).status_code == 200, path
    for event_id, body in kept.items():
        assert client.get(f"/admin/events/{event_id}").status_code == 200, body[:300]
        assert command(app, "show", event_id, "--json")["id"] == event_id, body[:300]


# -- real gunicorn (contrib/gunicorn.conf.py), directly and behind the contrib nginx -----------
# The suite sends a few hundred; DOLIBARR_WEBHOOKS_HOSTILE_BODIES=2000 gives the issue's figure.
HOSTILE_BODIES = int(os.environ.get("DOLIBARR_WEBHOOKS_HOSTILE_BODIES") or 300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_tool("nginx", "nginx-light")
    env = production_env(DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1")
    with running_service(env=env, workers=3) as service:
        with running_nginx(tmp_path_factory.mktemp("nginx"), service.port) as nginx:
            yield service, nginx


def send_all(port: int, requests: list[Hostile], context=None) -> list[tuple[Hostile, Answer]]:
    with ThreadPoolExecutor(8) as pool:
        return list(zip(requests, pool.map(lambda r: send(port, r, context), requests)))


def stored_count(service) -> int:
    stats = service.stats()
    return stats["events"] + stats["duplicates"] + stats["quarantined"]


@pytest.mark.slow
@pytest.mark.parametrize("through", ["gunicorn", "nginx"])
def test_hostile_requests_never_get_a_5xx_nor_kill_a_worker(stack, through):
    service, nginx = stack
    context = None
    if through == "nginx":
        context = ssl.create_default_context(cafile=str(nginx.cert))
    port = nginx.https_port if through == "nginx" else service.port
    before = stored_count(service)
    answers = send_all(port, hostile_requests(service.secret, HOSTILE_BODIES), context)

    statuses = Counter(answer.status for _, answer in answers)
    print(f"\n{len(answers)} hostile requests through {through}: {dict(sorted(statuses.items(), key=str))}")
    failed = [(r.name, a.status, a.body[:120]) for r, a in answers if a.status is not None and a.status >= 500]
    assert not failed, failed
    not_json = [(r.name, a.head[:200]) for r, a in answers if a.status is not None and not a.is_json]
    assert not not_json, not_json
    echoed = [r.name for r, a in answers if service.secret.encode() in a.body or service.secret in a.head]
    assert not echoed, f"answers that repeat the secret: {echoed}"
    by_name: dict[str, set] = {}
    for request, answer in answers:
        # nginx's flood limit (50 per second, bursts of 200) may answer any of them first.
        if not (through == "nginx" and answer.status == 429):
            by_name.setdefault(request.name, set()).add(answer.status)

    def answered(name: str, expected: set) -> set:
        # Through nginx, with thousands sent (DOLIBARR_WEBHOOKS_HOSTILE_BODIES), the flood limit
        # may have answered every request of a name: nothing else to check for it then.
        assert name in by_name or through == "nginx", f"no answer to {name!r}"
        return by_name.get(name, expected)

    assert answered("valid event", {200}) == {200} and answered("chunked, valid", {200}) == {200}
    assert answered("chunked over the limit", {413}) == {413}, "too large, whatever the framing"
    assert answered("double slash", {404}) == {404}, "no redirect that repeats the secret"
    assert answered("lone surrogate", {200}) <= {200} and answered("deep nesting closed", {202}) <= {202}
    assert answered("chunked, bad size", {400}) == {400}
    assert answered("chunked, unauthenticated and bad", {400}) == {400}
    # What got a 2xx is stored, and only that.
    accepted = sum(1 for _, answer in answers if answer.status is not None and 200 <= answer.status < 300)
    assert stored_count(service) - before == accepted
    log = service_logs(service)
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log, log[-3000:]


@pytest.mark.slow
def test_a_worker_aborted_after_its_timeout_answers_json(tmp_path):
    # The sync worker (production ran it before threads, and it stays for whoever picks it
    # with -k), with a 2 s worker timeout, under the read deadlines: a stalled body holds the
    # worker until gunicorn aborts it, and gunicorn's own 500 is what the client sees.
    with running_service(env=production_env(), workers=1, worker=False,
                         gunicorn_args=["--timeout", "2", "-k", "dolibarr_webhooks.web.gunicorn.SyncWorker",
                                        "--threads", "1"]) as service:
        stalled = Hostile("stalled", f"POST /webhook/{service.secret} HTTP/1.1\r\nHost: x\r\n"
                                     f"Content-Length: 100\r\n\r\n{{".encode(), stall=True)
        answer = send(service.port, stalled)
        assert answer.status == 500 and answer.is_json, answer
        assert json.loads(answer.body) == {"error": "internal_server_error", "status": 500,
                                           "message": "the service failed; the error is in its log"}
        assert "WORKER TIMEOUT" in service_logs(service), "the test provoked what it meant to"


@pytest.mark.slow
def test_serve_stays_responsive_under_slowloris(tmp_path):
    """``serve`` faces Dolibarr without a proxy: 20 clients sending their headers a byte a
    second (reconnecting whenever dropped) for 10 s, while Dolibarr posts one event after
    another. The promise: at least 95 % answered within a second (the issue's measure)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    env.update({"DOLIBARR_WEBHOOKS_SECRET": SECRET, "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path}/w.db",
                "PYTHONUNBUFFERED": "1"})
    service = RunningService(Path(sys.executable), tmp_path, env, port)
    try:
        process = service.start("serve", [str(service.bin / "dolibarr-webhooks"), "serve", "--host", "127.0.0.1",
                                          "--port", str(port)])
        wait_for_port(port, process=process)
        body = json.loads(sample_body("BILL_PAYED"))
        answers = []
        with slowloris(port, connections=20) as attack:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                body["object"]["id"] = len(answers)
                started = time.monotonic()
                try:
                    status = requests.post(service.webhook_url, json=body, timeout=10).status_code
                except requests.RequestException:
                    status = None
                answers.append((status, time.monotonic() - started))
        assert attack["connections"] >= 20, attack
        in_time = sum(1 for status, elapsed in answers if status == 200 and elapsed < 1)
        print(f"\n{in_time} of {len(answers)} answered 200 within 1 s under {attack['connections']} slow connections")
        assert in_time >= 0.95 * len(answers), answers
    finally:
        service.close()
