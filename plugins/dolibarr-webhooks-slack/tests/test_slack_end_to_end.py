"""The published shape: pip install into a fresh venv, real service and worker, real HTTP to 'Slack'."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dolibarr_webhooks import testing

ROOT = Path(__file__).resolve().parents[3]  # the repository: the core's project
PLUGIN = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_slack_proposal_signed_reaches_the_sales_channel(tmp_path, slack):
    python = testing.fresh_venv(tmp_path / "venv", ROOT, PLUGIN)
    env = {
        # The README's two lines, pointed at the local Slack stand-in.
        "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL": slack.url("ok", channel="SALES"),
        "DOLIBARR_WEBHOOKS_SLACK_EVENTS": "PROPAL_CLOSE_SIGNED",
        "DOLIBARR_WEBHOOKS_DOLIBARR_URL": "https://erp.example",
    }
    with testing.running_service(python, env=env) as service:
        listed = service.cli("plugins", "--json")
        assert listed.returncode == 0, listed.stderr
        assert '"slack"' in listed.stdout  # found through its entry point in the fresh venv

        assert service.post("BILL_PAYED").status_code < 300  # not for the sales channel
        assert service.post("PROPAL_CLOSE_SIGNED").status_code < 300
        try:
            slack.wait_for(1, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; service logs:\n{service.logs()}") from None
        stats = service.wait_delivered(1, plugin="slack")
        time.sleep(1)  # room for a wrong second message (BILL_PAYED) to arrive
        posted = slack.posted()

    assert stats["plugins"]["slack"] == {"pending": 0, "running": 0, "delivered": 1, "failed": 0, "dead": 0}

    assert len(posted) == 1, [r["json"]["text"] for r in posted]
    request = posted[0]
    assert request["path"] == "/services/T000TEAM/SALES/ok"
    message = request["json"]
    assert message["text"].startswith("Proposal PR2611-0088 signed: 2,243.76 EUR")
    blocks = message["blocks"]
    assert blocks[0]["text"]["text"] == ":memo: Proposal PR2611-0088 signed"
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert "*Amount incl. tax*\n2,243.76 EUR" in fields
    assert "*Ref*\n<https://erp.example/comm/propal/card.php?id=88|PR2611-0088>" in fields
    buttons = [e["url"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
    assert buttons == ["https://erp.example/comm/propal/card.php?id=88"]
