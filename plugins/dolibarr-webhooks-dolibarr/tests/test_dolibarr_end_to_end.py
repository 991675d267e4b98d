"""End to end: a fresh venv with the core, this plugin and the test plugins (real pip installs),
the service under gunicorn with its worker process, Dolibarr's bodies posted, and the fake
Dolibarr's REST API checked for what the plugin did there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dolibarr_webhooks import testing

pytestmark = pytest.mark.slow

PLUGIN_DIR = Path(__file__).parents[1]
REPO_ROOT = Path(__file__).parents[3]
TESTPLUGIN_DIR = REPO_ROOT / "tests" / "testplugin"


def test_signed_proposal_makes_one_order_and_deliveries_reach_the_card(tmp_path, dolibarr):
    python = testing.fresh_venv(tmp_path / "venv", str(REPO_ROOT), str(PLUGIN_DIR), str(TESTPLUGIN_DIR))
    env = {
        "DOLIBARR_WEBHOOKS_DOLIBARR_URL": dolibarr.root,  # the core's: links to cards, and the API below it
        "DOLIBARR_WEBHOOKS_DOLIBARR_API_KEY": dolibarr.key,
        "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS": json.dumps({"PROPAL_CLOSE_SIGNED": ["create_order"]}),
        "DOLIBARR_WEBHOOKS_DOLIBARR_SETTLE_DELAY": "0.2",
        "DOLIBARR_WEBHOOKS_RECORDER_FILE": str(tmp_path / "recorded.jsonl"),
        "DOLIBARR_WEBHOOKS_RECORDER_EVENTS": "BILL_PAYED",
        "DOLIBARR_WEBHOOKS_RETRY_SCHEDULE": "1s,1s,1s",
    }
    dolibarr.fail_after_create = 1  # the first attempt's order is saved, its answer is a 500
    with testing.running_service(python, env=env) as service:
        plugins = {p["name"]: p for p in json.loads(service.cli("plugins", "--json").stdout)}
        assert plugins["dolibarr"]["status"] == "enabled", plugins["dolibarr"]
        assert plugins["dolibarr"]["events"] == ["PROPAL_CLOSE_SIGNED"]

        assert service.post("PROPAL_CLOSE_SIGNED").ok
        assert service.post("BILL_PAYED").ok
        service.wait_delivered(1, plugin="dolibarr", timeout=60)
        testing.wait_for(lambda: dolibarr.agenda, 30, message=lambda: service.logs(tail=4000))
        rows = json.loads(service.cli("deliveries", "--plugin", "dolibarr", "--json").stdout)
        logs = service.logs()

    # Exactly one order, although createfromproposal was called once and failed after saving it.
    assert dolibarr.order_ids_of(88) == ["22"], logs
    assert len(dolibarr.made("POST", r"orders/createfromproposal/88")) == 1
    assert [(row["trigger_code"], row["status"], row["attempts"]) for row in rows] == [
        ("PROPAL_CLOSE_SIGNED", "delivered", 2)], logs
    assert len(dolibarr.made("GET", "proposals/88")) == 2  # the retry re-read it and found order 22 linked
    assert "proposal PR2611-0088 already has order 22; none created" in logs  # in the service's own log

    # The recorder's delivery of the payment, on the invoice's card and its third party's.
    (written,) = dolibarr.agenda.values()
    assert (written["elementtype"], written["elementid"], written["socid"]) == ("invoice", "311", "42")
    assert written["label"] == "recorder done: Invoice FA2611-0042 paid: 2,243.76 EUR incl. tax (third party 42)"
    assert written["userownerid"] == str(dolibarr.user_id)
    assert {call.key for call in dolibarr.calls} == {dolibarr.key}
    assert dolibarr.key not in logs
