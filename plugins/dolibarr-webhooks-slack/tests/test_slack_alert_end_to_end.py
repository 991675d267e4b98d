"""Alerting end to end: real gunicorn and worker, a Slack channel that refuses every message
(404 no_service: each delivery dead at once) and an alerts channel, both on the fake Slack."""

from __future__ import annotations

import json
import time

import pytest

from dolibarr_webhooks import testing
from dolibarr_webhooks.samples import sample_body

INTERVAL = 4  # seconds: DOLIBARR_WEBHOOKS_ALERT_INTERVAL, short for the test


def invoice(number: int) -> bytes:
    """A distinct BILL_PAYED body: the receiver drops a repeated one as a duplicate."""
    data = json.loads(sample_body("BILL_PAYED"))
    data["object"].update(id=1000 + number, ref=f"FA2612-{number:04d}")
    return json.dumps(data).encode()


def dead_channel_service(slack):
    return testing.running_service(worker=False, env={
        "DOLIBARR_WEBHOOKS_PLUGINS": "slack",
        "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL": slack.url("no_service", channel="SALES"),
        "DOLIBARR_WEBHOOKS_SLACK_ALERT_WEBHOOK_URL": slack.url("ok", channel="ALERTS"),
        "DOLIBARR_WEBHOOKS_ALERT_INTERVAL": f"{INTERVAL}s",
        "DOLIBARR_WEBHOOKS_DOLIBARR_URL": "https://erp.example",
    })


def run(service, slack, events: int, alerts: int) -> list[dict]:
    """Post ``events`` invoices, then start the worker (so they go dead together, within one
    interval); wait for ``alerts`` alerts, then long enough for a wrong extra one to arrive."""
    for number in range(events):
        assert service.post(invoice(number)).status_code < 300
    service.start_worker()
    testing.wait_for(lambda: service.stats()["plugins"]["slack"]["dead"] == events, 60,
                     message=lambda: service.logs(tail=4000))
    testing.wait_for(lambda: len(slack.posted("ALERTS")) >= alerts, INTERVAL + 20,
                     message=lambda: f"{len(slack.posted('ALERTS'))} alerts\n{service.logs(tail=4000)}")
    time.sleep(INTERVAL + 2)
    return [request["json"] for request in slack.posted("ALERTS")]


@pytest.mark.slow
def test_one_dead_delivery_one_alert(slack):
    with dead_channel_service(slack) as service:
        alerts = run(service, slack, events=1, alerts=1)
        assert len(slack.posted("SALES")) == 1

    assert len(alerts) == 1, [a["text"] for a in alerts]
    (alert,) = alerts
    assert alert["blocks"][0]["text"]["text"] == ":rotating_light: dolibarr-webhooks: slack delivery dead"
    assert "Slack answered 404 no_service" in alert["text"]
    assert "FA2612-0000" in alert["text"]
    assert "dolibarr-webhooks replay " in alert["text"] and "--plugin slack" in alert["text"]


@pytest.mark.slow
def test_forty_dead_deliveries_one_alert_and_one_digest(slack):
    with dead_channel_service(slack) as service:
        alerts = run(service, slack, events=40, alerts=2)
        assert len(slack.posted("SALES")) == 40

    assert len(alerts) == 2, [a["text"] for a in alerts]
    first, digest = alerts
    assert first["blocks"][0]["text"]["text"] == ":rotating_light: dolibarr-webhooks: slack delivery dead"
    assert digest["blocks"][0]["text"]["text"] == (
        f":rotating_light: dolibarr-webhooks: 39 more slack deliveries dead in the last {INTERVAL} s")
    sections = "\n".join(b["text"]["text"] for b in digest["blocks"] if b["type"] == "section" and "text" in b)
    assert "`dolibarr-webhooks replay --dead --plugin slack`" in sections
    assert sections.count("dead after 1 attempt") == 10 and "… and 29 more" in sections
    # The first alert was about one invoice, the digest about the 39 others.
    assert sum(f"FA2612-{n:04d}" in json.dumps(first) for n in range(40)) == 1
