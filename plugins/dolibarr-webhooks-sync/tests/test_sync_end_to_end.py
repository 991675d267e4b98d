"""End to end: a fresh venv with the core and this plugin, the service under gunicorn with its
worker, a Dolibarr body posted, and the forwarded request verified with ``standardwebhooks``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

testing = pytest.importorskip("dolibarr_webhooks.testing")
if not hasattr(testing, "running_service"):  # the core's fixtures are not written yet
    pytest.skip("dolibarr_webhooks.testing.running_service is not available yet", allow_module_level=True)

pytestmark = pytest.mark.slow

PLUGIN_DIR = Path(__file__).parents[1]
REPO_ROOT = Path(__file__).parents[3]


def test_bill_payed_is_forwarded_signed_and_enriched(tmp_path, receiver, dolibarr, secret):
    python = testing.fresh_venv(tmp_path / "venv", str(REPO_ROOT), str(PLUGIN_DIR))
    env = {
        "DOLIBARR_WEBHOOKS_SYNC_URL": receiver.url("/erp2?token=t"),
        "DOLIBARR_WEBHOOKS_SYNC_SECRET": secret,
        "DOLIBARR_WEBHOOKS_SYNC_EVENTS": "BILL_PAYED",
        "DOLIBARR_WEBHOOKS_SYNC_HEADERS": json.dumps({"X-Tenant": "acme"}),
        "DOLIBARR_WEBHOOKS_SYNC_TIMEOUT": "5",
        "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_URL": dolibarr.url,
        "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_KEY": dolibarr.key,
        "DOLIBARR_WEBHOOKS_SYNC_ENRICH_DELAY": "0.2",
    }
    dolibarr.pending["invoices/311"] = 1  # the first read comes before Dolibarr's commit
    with testing.running_service(python, env=env) as service:
        assert service.post("COMPANY_CREATE").ok  # not in EVENTS: not forwarded
        assert service.post("BILL_PAYED").ok
        received = receiver.wait_for(1, timeout=30)
        assert received, f"nothing forwarded; service logs:\n{service.logs()}"
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
    assert dolibarr.paths() == ["invoices/311", "invoices/311"]
    assert {key for _, _, key in dolibarr.hits} == {dolibarr.key}
