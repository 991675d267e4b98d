"""Alerts to a Slack channel (the ``alert`` hook), posted to the fake Slack, which refuses
what Slack refuses."""

from __future__ import annotations

import pytest

import dolibarr_webhooks_slack as slack_plugin
from dolibarr_webhooks import ConfigError, PermanentFailure
from dolibarr_webhooks.pluginkit import DEAD, DIGEST, RECOVERED, Alert, Outcome, summary

pytestmark = pytest.mark.filterwarnings("ignore:.*uses plain http:UserWarning")


def dead(event, error="SMTP answered 550 5.1.1 mailbox unavailable", dashboard=None) -> Outcome:
    return Outcome(DEAD, "email", event, attempts=5, error=error, dashboard_url=dashboard)


def fields_of(message) -> list[str]:
    return [f["text"] for b in message["blocks"] if b["type"] == "section" for f in b.get("fields", [])]


def texts_of(message) -> str:
    return "\n".join(b["text"]["text"] for b in message["blocks"] if b["type"] == "section" and "text" in b)


def test_alerts_only_channel_handles_no_event(slack):
    settings = slack_plugin.read_settings(config={"alert_webhook_url": slack.url("ok", channel="ALERTS")})
    assert settings.rules == () and settings.alert is not None
    assert slack_plugin.handled_events(settings=settings) == []


def test_dead_delivery_alert(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("ok", channel="SALES"),
                                                  "alert_webhook_url": slack.url("ok", channel="ALERTS")})
    event = make_event("BILL_PAYED")
    dashboard = f"https://hooks.example/admin/events/{event.id}"
    alert = Alert(DEAD, "email", dead=(dead(event, dashboard=dashboard),), interval=900)
    slack_plugin.alert(alert=alert, settings=settings)

    assert slack.posted("SALES") == []
    (request,) = slack.posted("ALERTS")
    message = request["json"]
    assert message["blocks"][0]["text"]["text"] == ":rotating_light: dolibarr-webhooks: email delivery dead"
    assert "*Plugin*\n`email`" in fields_of(message)
    assert "*Last error*\nSMTP answered 550 5.1.1 mailbox unavailable" in fields_of(message)
    text = texts_of(message)
    # The event in words, linked to its Dolibarr card, and how to replay it.
    assert f"<{event.card_url}|{summary(event)}> (`BILL_PAYED`, event {event.id}): dead after 5 attempts" in text
    assert f"*Replay*\n`dolibarr-webhooks replay {event.id} --plugin email`" in text
    buttons = [e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons == [dashboard]
    # The notification text is the core's wording.
    assert message["text"].startswith("dolibarr-webhooks: email delivery dead\nDead after 5 attempts: ")
    assert f"Replay: dolibarr-webhooks replay {event.id} --plugin email" in message["text"]


def test_digest_alert(slack, make_event):
    settings = slack_plugin.read_settings(config={"alert_webhook_url": slack.url("ok", channel="ALERTS")})
    outcomes = tuple(dead(make_event("BILL_PAYED"), error=f"timeout {n}") for n in range(25))
    slack_plugin.alert(alert=Alert(DIGEST, "email", dead=outcomes, interval=900), settings=settings)

    (request,) = slack.posted("ALERTS")
    message = request["json"]
    assert message["blocks"][0]["text"]["text"] == (
        ":rotating_light: dolibarr-webhooks: 25 more email deliveries dead in the last 15 min")
    assert "*Dead deliveries*\n25" in fields_of(message)
    assert "*Last error*\ntimeout 24" in fields_of(message)
    text = texts_of(message)
    assert text.count("dead after 5 attempts") == slack_plugin.ALERT_EVENTS
    assert "… and 15 more" in text
    assert "*Replay*\n`dolibarr-webhooks replay --dead --plugin email`" in text
    assert not [b for b in message["blocks"] if b["type"] == "actions"]  # no dashboard served


def test_recovered_alert(slack, make_event):
    settings = slack_plugin.read_settings(config={"alert_webhook_url": slack.url("ok", channel="ALERTS")})
    event = make_event("PROPAL_CLOSE_SIGNED")
    recovered = Outcome(RECOVERED, "sync", event, attempts=2)
    slack_plugin.alert(alert=Alert(RECOVERED, "sync", recovered=recovered, interval=900), settings=settings)

    (request,) = slack.posted("ALERTS")
    message = request["json"]
    assert message["blocks"][0]["text"]["text"] == ":white_check_mark: dolibarr-webhooks: sync delivers again"
    assert f"Delivered <{event.card_url}|{summary(event)}>" in texts_of(message)
    assert "Replay" not in texts_of(message)


def test_mrkdwn_in_errors_is_escaped(slack, make_event):
    settings = slack_plugin.read_settings(config={"alert_webhook_url": slack.url("ok", channel="ALERTS")})
    alert = Alert(DEAD, "sync", dead=(dead(make_event("BILL_PAYED"), error="<!channel> 500 & <b>" + "x" * 3000),))
    slack_plugin.alert(alert=alert, settings=settings)
    (request,) = slack.posted("ALERTS")
    (error,) = [f for f in fields_of(request["json"]) if f.startswith("*Last error*")]
    assert error.startswith("*Last error*\n&lt;!channel&gt; 500 &amp; &lt;b&gt;") and len(error) <= 2000
    assert "<!channel>" not in request["json"]["text"]


def test_without_alerts_channel_alerts_are_ignored(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("ok", channel="SALES")})
    slack_plugin.alert(alert=Alert(DEAD, "email", dead=(dead(make_event("BILL_PAYED")),)), settings=settings)
    assert slack.posted() == []


def test_a_refused_alert_raises_for_the_core_to_log(slack, make_event):
    settings = slack_plugin.read_settings(config={"alert_webhook_url": slack.url("no_service", channel="ALERTS")})
    with pytest.raises(PermanentFailure, match="DOLIBARR_WEBHOOKS_SLACK_ALERT_WEBHOOK_URL: Slack answered 404"):
        slack_plugin.alert(alert=Alert(DEAD, "email", dead=(dead(make_event("BILL_PAYED")),)), settings=settings)


def test_alert_webhook_url_is_checked_and_never_echoed():
    with pytest.raises(ConfigError) as caught:
        slack_plugin.read_settings(config={"alert_webhook_url": "hooks.slack.com/services/T/B/XXXXSECRETXXXX"})
    assert caught.value.setting == "DOLIBARR_WEBHOOKS_SLACK_ALERT_WEBHOOK_URL"
    assert "XXXXSECRETXXXX" not in str(caught.value)
