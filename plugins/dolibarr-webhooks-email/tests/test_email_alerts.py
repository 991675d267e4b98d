"""The ``alert`` hook against a real SMTP server on loopback: a person hears about dead deliveries,
in words, with the error and how to replay; and the ALERT_TO settings."""

from __future__ import annotations

import pytest

import dolibarr_webhooks_email as plugin
from dolibarr_webhooks import ConfigError
from dolibarr_webhooks.pluginkit import DEAD, DIGEST, RECOVERED, Alert, Outcome

DASHBOARD = "https://hooks.acme.example/admin/events/"


def dead(event, error="Slack answered 404: channel_not_found", attempts=5):
    return Outcome(DEAD, "slack", event, attempts, error, dashboard_url=DASHBOARD + event.id)


@pytest.fixture
def alert_settings(smtp_server, email_config):
    """``alert_settings(**settings)``: alerts only (no rule), to ops@acme.example."""

    def make(**extra):
        return plugin.read_settings(config=email_config(smtp_server, alert_to="Ops <ops@acme.example>", **extra))

    return make


def test_alerts_only_is_a_configuration_that_handles_no_events(alert_settings):
    settings = alert_settings()
    assert settings.rules == () and settings.alert_to == ("Ops <ops@acme.example>",)
    assert plugin.handled_events(settings=settings) == []


def test_one_dead_delivery_in_words(alert_settings, smtp_server, dolibarr_event):
    event = dolibarr_event("BILL_PAYED")
    alert = Alert(DEAD, "slack", dead=(dead(event),), interval=900)
    plugin.alert(alert=alert, settings=alert_settings())
    (sent,) = smtp_server.received
    assert sent.rcpt_tos == ["ops@acme.example"] and sent.mail_from == "erp@acme.example"
    assert sent.message["Subject"] == alert.title == "dolibarr-webhooks: slack delivery dead"
    assert sent.message["Auto-Submitted"] == "auto-generated"
    assert sent.html is None  # plain text: it goes to people who read logs
    text = sent.text.replace("\r\n", "\n")
    assert "A delivery of the slack plugin went dead" in text
    assert (f"- Invoice FA2611-0042 paid: 2,243.76 EUR incl. tax (third party 42) (BILL_PAYED, event {event.id}), "
            "after 5 attempts:") in text
    assert "Last error: Slack answered 404: channel_not_found" in text
    assert f"    dolibarr-webhooks replay {event.id} --plugin slack\n" in text
    assert f"Dashboard: {DASHBOARD}{event.id}" in text


def test_a_digest_lists_twenty_and_counts_the_rest(alert_settings, smtp_server, dolibarr_event):
    outcomes = tuple(dead(dolibarr_event("BILL_PAYED", ref=f"FA-{n}"), error=f"timeout {n}") for n in range(25))
    alert = Alert(DIGEST, "slack", dead=outcomes, interval=900)
    plugin.alert(alert=alert, settings=alert_settings())
    (sent,) = smtp_server.received
    assert sent.message["Subject"] == "dolibarr-webhooks: 25 more slack deliveries dead in the last 15 min"
    text = sent.text.replace("\r\n", "\n")
    assert "More deliveries of the slack plugin went dead since the last alert (25)" in text
    assert "Invoice FA-19 paid" in text and "Invoice FA-20 paid" not in text
    assert "... and 5 more." in text
    assert "Last error: timeout 24" in text
    assert "    dolibarr-webhooks replay --dead --plugin slack\n" in text


def test_french_when_the_plugin_speaks_french(alert_settings, smtp_server, dolibarr_event):
    event = dolibarr_event("BILL_PAYED")
    plugin.alert(alert=Alert(DEAD, "slack", dead=(dead(event, attempts=1),)), settings=alert_settings(language="fr"))
    text = smtp_server.received[0].text.replace("\r\n", "\n")
    assert "Une livraison du plugin slack a échoué définitivement" in text
    assert "Facture FA2611-0042 payée" in text and "après 1 tentative :" in text
    assert "Dernière erreur : Slack answered 404: channel_not_found" in text
    assert f"dolibarr-webhooks replay {event.id} --plugin slack" in text


def test_recovery_is_told_with_what_was_still_held(alert_settings, smtp_server, dolibarr_event):
    held = dead(dolibarr_event("BILL_PAYED"))
    ok = Outcome(RECOVERED, "slack", dolibarr_event("COMPANY_CREATE"), 2)
    plugin.alert(alert=Alert(RECOVERED, "slack", dead=(held,), recovered=ok), settings=alert_settings())
    (sent,) = smtp_server.received
    assert sent.message["Subject"] == "dolibarr-webhooks: slack delivers again"
    assert "The slack plugin delivers again: Third party Acme Industries created" in sent.text
    assert "These deliveries went dead before it recovered:" in sent.text and "Invoice FA2611-0042" in sent.text


def test_rules_and_alerts_together(smtp_server, email_config, dolibarr_event):
    settings = plugin.read_settings(config=email_config(smtp_server, to="accounting@acme.example",
                                                        events="BILL_PAYED", alert_to="ops@acme.example"))
    assert plugin.handled_events(settings=settings) == ["BILL_PAYED"]
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    plugin.alert(alert=Alert(DEAD, "sync", dead=(dead(dolibarr_event("ORDER_VALIDATE")),)), settings=settings)
    paid, alert = smtp_server.received
    assert paid.rcpt_tos == ["accounting@acme.example"] and alert.rcpt_tos == ["ops@acme.example"]


def test_without_alert_to_no_alert_is_sent(smtp_server, email_config, dolibarr_event):
    settings = plugin.read_settings(config=email_config(smtp_server, to="accounting@acme.example"))
    plugin.alert(alert=Alert(DEAD, "sync", dead=(dead(dolibarr_event("ORDER_VALIDATE")),)), settings=settings)
    assert smtp_server.received == []


def test_smtp_down_raises_so_the_core_retries(alert_settings, smtp_server, closed_port, dolibarr_event):
    smtp_server.port = closed_port
    with pytest.raises(ConnectionError):
        plugin.alert(alert=Alert(DEAD, "sync", dead=(dead(dolibarr_event("ORDER_VALIDATE")),)),
                     settings=alert_settings())


@pytest.mark.parametrize(("changes", "setting"), [
    ({"alert_to": "ops"}, "DOLIBARR_WEBHOOKS_EMAIL_ALERT_TO"),
    ({"alert_to": "ops@acme.example", "from": None}, "DOLIBARR_WEBHOOKS_EMAIL_FROM"),
])
def test_bad_alert_settings_name_the_setting(smtp_server, email_config, changes, setting):
    config = {k: v for k, v in email_config(smtp_server, **changes).items() if v is not None}
    with pytest.raises(ConfigError) as info:
        plugin.read_settings(config=config)
    assert info.value.setting == setting
