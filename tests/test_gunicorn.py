"""Real HTTP to a real gunicorn on loopback, and Dolibarr's own curl request (PHP)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from dolibarr_webhooks.samples import sample_codes
from dolibarr_webhooks.testing import running_service

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared" / "dolibarr"
SENDER = SHARED / "dolibarr_send.php"
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


def php_available() -> str | None:
    if not SENDER.is_file():
        return f"{SENDER} is absent: the interoperability test needs ../shared/dolibarr (CI has it)"
    if not shutil.which("php"):
        return "php is not installed (apt-get install php-cli php-curl; .ci/run does it)"
    return None


def dolibarr_send(url: str, payload: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(["php", str(SENDER), *options, "--show-request", url, str(payload)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version", ["20", "22", "23"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS.glob("*.json")), ids=lambda p: p.stem)
def test_dolibarr_curl_request_is_a_success(service, version, payload):
    reason = php_available()
    if reason:
        pytest.skip(reason)
    # 23.0.3+ refuses loopback targets unless conf.php allows local URLs: what an admin must set.
    options = [f"--dolibarr={version}"] + (["--allow-localurl"] if version == "23" else [])
    result = dolibarr_send(service.webhook_url, payload, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP status        : 200" in result.stdout


def test_dolibarr_23_refuses_local_url_without_the_setting(service):
    reason = php_available()
    if reason:
        pytest.skip(reason)
    result = dolibarr_send(service.webhook_url, PAYLOADS / "BILL_PAYED.json", "--dolibarr=23")
    assert result.returncode == 1 and "private or reserved" in result.stdout


def test_dolibarr_sends_a_multi_megabyte_invoice_with_expect_continue(service, tmp_path):
    reason = php_available()
    if reason:
        pytest.skip(reason)
    body = json.loads((PAYLOADS / "BILL_VALIDATE.json").read_text())
    line = body["object"]["lines"][0]
    body["object"]["lines"] = [dict(line, id=i, rang=i) for i in range(600)]  # about 3 MB
    big = tmp_path / "big.json"
    big.write_text(json.dumps(body).replace("/", "\\/"))
    result = dolibarr_send(service.webhook_url, big, "--dolibarr=22")
    assert "Expect: 100-continue" in result.stdout
    assert result.returncode == 0, result.stdout


def test_dolibarr_basic_auth_url(service):
    reason = php_available()
    if reason:
        pytest.skip(reason)
    # https://user:pass@host/ typed in the target form: curl sends Authorization: Basic.
    url = service.url.replace("http://", f"http://dolibarr:{service.secret}@") + "/webhook"
    result = dolibarr_send(url, PAYLOADS / "COMPANY_CREATE.json", "--dolibarr=22")
    assert result.returncode == 0, result.stdout
