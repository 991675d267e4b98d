"""End to end: a fresh venv with the core and this plugin, the service under gunicorn with its
worker, Dolibarr bodies posted, and the forwarded request verified with ``standardwebhooks``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dolibarr_webhooks import testing

pytestmark = pytest.mark.slow

PLUGIN_DIR = Path(__file__).parents[1]
REPO_ROOT = Path(__file__).parents[3]


def dead_sync_deliveries(service, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = json.loads(service.cli("deliveries", "--status", "dead", "--plugin", "sync", "--json").stdout)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_bill_payed_is_forwarded_signed_and_enriched(tmp_path, receiver, dolibarr, secret):
    python = testing.fresh_venv(tmp_path / "venv", str(REPO_ROOT), str(PLUGIN_DIR))
    env = {
        "DOLIBARR_WEBHOOKS_SYNC_URL": receiver.url("/erp2?token=t"),
        "DOLIBARR_WEBHOOKS_SYNC_SECRET": secret,
        "DOLIBARR_WEBHOOKS_SYNC_EVENTS": "BILL_PAYED,COMPANY_CREATE",
        "DOLIBARR_WEBHOOKS_SYNC_HEADERS": json.dumps({"X-Tenant": "acme"}),
        "DOLIBARR_WEBHOOKS_SYNC_TIMEOUT": "5",
        "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_URL": dolibarr.url,
        "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_KEY": dolibarr.key,
        "DOLIBARR_WEBHOOKS_SYNC_ENRICH_DELAY": "0.2",
        "DOLIBARR_WEBHOOKS_SYNC_ENRICH_ATTEMPTS": "3",
    }
    dolibarr.pending["invoices/311"] = 1  # the first read comes before Dolibarr's commit
    dolibarr.missing.add("thirdparties/42")  # this third party's creation was rolled back
    with testing.running_service(python, env=env) as service:
        plugins = {p["name"]: p for p in json.loads(service.cli("plugins", "--json").stdout)}
        assert plugins["sync"]["status"] == "enabled"
        assert plugins["sync"]["events"] == ["BILL_PAYED", "COMPANY_CREATE"]

        assert service.post("PRODUCT_CREATE").ok  # not in EVENTS: not forwarded
        assert service.post("COMPANY_CREATE").ok
        assert service.post("BILL_PAYED").ok
        received = receiver.wait_for(1, timeout=30)
        assert received, f"nothing forwarded; service logs:\n{service.logs()}"
        dead = dead_sync_deliveries(service)
        logs = service.logs()
        received = receiver.wait_for(2, timeout=1)  # anything else that was forwarded

    (request,) = received
    assert request.verified, request.error
    assert request.path == "/erp2?token=t"
    assert request.headers["x-tenant"] == "acme"
    message = request.payload
    assert message["type"] == "BILL_PAYED"
    assert message["data"]["object_id"] == "311"
    assert message["data"]["enriched"] is True
    assert message["data"]["object"]["ref"] == "COMMITTED-311"
    assert sorted(dolibarr.paths()) == ["invoices/311"] * 2 + ["thirdparties/42"] * 3
    assert {key for _, _, key in dolibarr.hits} == {dolibarr.key}

    # The rolled-back third party is reported, not forwarded: a dead delivery, and a warning.
    assert [(row["trigger_code"], row["attempts"]) for row in dead] == [("COMPANY_CREATE", 1)], logs
    assert "rolled back" in dead[0]["last_error"]
    assert "not found in Dolibarr" in logs
