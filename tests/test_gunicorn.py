"""Real HTTP to a real gunicorn on loopback, and Dolibarr's own curl request (PHP)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
import requests

from dolibarr_webhooks.samples import sample_codes
from dolibarr_webhooks.testing import running_service
from production_helpers import CAPTURED, big_invoice, dolibarr_send, require_php

pytestmark = pytest.mark.slow

PAYLOADS = Path(__file__).parent / "data" / "payloads"


@pytest.fixture(scope="module")
def service():
    with running_service() as running:
        yield running


def test_every_sample_through_gunicorn(service):
    ids = []
    for code in sample_codes():
        response = service.post(code)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    stats = service.wait_delivered(len(ids))
    assert stats["events"] >= len(ids)
    shown = json.loads(service.cli("show", ids[0], "--json").stdout)
    assert shown["deliveries"][0]["status"] == "delivered"


def test_error_paths_through_gunicorn(service):
    assert service.post("BILL_PAYED", path="/webhook").status_code == 401
    assert service.post(b'{"object":{}}').status_code == 422
    assert service.post(b"").status_code == 202
    response = requests.get(service.url + "/nowhere", timeout=10)
    assert response.status_code == 404 and response.headers["Content-Type"].startswith("application/json")
    assert requests.delete(service.webhook_url, timeout=10).status_code == 405
    huge = b'{"triggercode":"BILL_PAYED","object":{"note":"' + b"x" * (17 * 1024 * 1024) + b'"}}'
    response = service.post(huge)
    assert response.status_code == 413 and response.json()["error"] == "request_entity_too_large"
    assert service.secret not in service.logs()


@pytest.mark.parametrize("version", ["19", "20", "22", "23"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS.glob("*.json")), ids=lambda p: p.stem)
def test_dolibarr_curl_request_is_a_success(service, version, payload):
    # 23.0.3+ refuses loopback targets unless conf.php allows local URLs: what an admin must set.
    options = [f"--dolibarr={version}"] + (["--allow-localurl"] if version == "23" else [])
    report = dolibarr_send(service.webhook_url, payload, *options)
    assert report["success"] and report["http_code"] == 200, report
    # Before 19.0.3 Dolibarr named no type: curl labels the JSON body a form.
    form = "Content-Type: application/x-www-form-urlencoded" in report["request_head"]
    assert form == (version == "19"), report["request_head"]


def _head(text: str) -> dict[str, str]:
    """A request head's headers, minus those that name the receiver (Host) or the body's size."""
    lines = text.strip().splitlines()[1:]
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
            if name.lower() not in ("host", "content-length")}


@pytest.mark.parametrize("captured", sorted(CAPTURED.glob("*.json")), ids=lambda p: p.stem)
def test_real_dolibarr_22_bodies_are_stored(service, captured):
    """Each body a real Dolibarr 22.0.4 posted, posted again the way it did: the request head is
    the one Dolibarr sent, Dolibarr counts the answer a success, and the event is on disk."""
    report = dolibarr_send(service.webhook_url, captured, "--dolibarr=22")
    assert report["success"] and report["http_code"] == 200, report
    real = captured.with_suffix(".headers.txt").read_text()
    assert _head(report["request_head"]) == _head(real)
    assert f"Content-Length: {captured.stat().st_size}" in report["request_head"]
    answer = json.loads(report["answer"])
    shown = json.loads(service.cli("show", answer["id"], "--json").stdout)
    code = json.loads(captured.read_bytes())["triggercode"]
    assert shown["trigger_code"] == code and shown["payload"]["object"]["id"]


def test_dolibarr_counts_a_refusal_as_a_failure(service):
    report = dolibarr_send(service.url + "/webhook/not-the-secret-0123456789", PAYLOADS / "BILL_PAYED.json")
    assert not report["success"] and report["http_code"] == 401


def test_dolibarr_23_refuses_local_url_without_the_setting(service):
    report = dolibarr_send(service.webhook_url, PAYLOADS / "BILL_PAYED.json", "--dolibarr=23")
    assert not report["success"] and report["curl_error_no"] == 1 and "private or reserved" in report["curl_error"]
    assert report["request_head"] == ""  # nothing was sent


def test_dolibarr_sends_a_multi_megabyte_invoice_with_expect_continue(service, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(big_invoice(3 * 1024 * 1024)[0])
    report = dolibarr_send(service.webhook_url, big, "--dolibarr=22")
    assert "Expect: 100-continue" in report["request_head"]
    assert report["success"], report


def test_dolibarr_basic_auth_url(service):
    # https://user:pass@host/ typed in the target form: curl sends Authorization: Basic.
    url = service.url.replace("http://", f"http://dolibarr:{service.secret}@") + "/webhook"
    report = dolibarr_send(url, PAYLOADS / "COMPANY_CREATE.json", "--dolibarr=22")
    assert report["success"], report
    assert "Authorization: Basic " in report["request_head"]


def test_without_php_the_skip_names_the_debian_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no php on it
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"apt-get install -y php-cli php-curl"):
        require_php()


@pytest.fixture
def redirector():
    """An HTTP server on loopback answering every POST with a redirection to ``target[0]``."""
    target = [""]

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(int(self.path.rsplit("/", 1)[-1]))
            self.send_header("Location", target[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", target
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("status", ["301", "302", "303", "307"])
def test_dolibarr_follows_a_redirection_and_posts_again(service, redirector, status):
    base, target = redirector
    target[0] = service.webhook_url
    report = dolibarr_send(f"{base}/moved/{status}", CAPTURED / "05_BILL_PAYED.json", "--dolibarr=22")
    assert report["success"] and [r["status"] for r in report["redirections"]] == [int(status)], report
    assert report["request_head"].startswith(f"POST /webhook/{service.secret} ")
    assert json.loads(report["answer"])["trigger_code"] == "BILL_PAYED"


def test_dolibarr_gives_up_after_five_redirections(redirector):
    base, target = redirector
    target[0] = f"{base}/again/307"
    report = dolibarr_send(target[0], CAPTURED / "05_BILL_PAYED.json", "--dolibarr=22")
    assert not report["success"] and len(report["redirections"]) == 6
    assert report["curl_error"] == "Maximum number of redirections reached"
