"""Word an alert about failing deliveries (the ``alert`` hook) as an email to the alert address."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Any

from dolibarr_webhooks.pluginkit import Alert, Outcome, summary

from .config import Settings
from .render import new_message, one_line

# A digest of a long outage lists this many dead deliveries, then counts the rest.
LISTED = 20


def _outcome(outcome: Outcome, language: str) -> dict[str, Any]:
    event = outcome.event
    return {"summary": summary(event, language), "code": event.trigger_code, "id": event.id,
            "attempts": outcome.attempts, "error": outcome.error, "card_url": event.card_url}


def context(alert: Alert, language: str) -> dict[str, Any]:
    """What ``<language>/_alert.body.txt`` sees: each event in words, the error, how to replay."""
    return {
        "alert": alert,
        "kind": alert.kind,
        "plugin": alert.plugin,
        "language": language,
        "dead": [_outcome(o, language) for o in alert.dead[:LISTED]],
        "more": max(0, len(alert.dead) - LISTED),
        "recovered": _outcome(alert.recovered, language) if alert.recovered is not None else None,
        "last_error": alert.last_error,
        "replay_command": alert.replay_command if alert.dead else None,
        "dashboard_url": alert.dashboard_url,
    }


def alert_message(alert: Alert, settings: Settings) -> EmailMessage:
    """The alert as one plain-text message: subject ``alert.title``, body in the plugin's language."""
    language = settings.language
    body = settings.templates.first([f"{language}/_alert.body.txt"]).render(context(alert, language))
    # read_settings requires a sender once ALERT_TO is set.
    msg = new_message(one_line(alert.title), settings.sender or "", settings.alert_to)
    msg["X-Dolibarr-Webhooks-Alert"] = f"{alert.kind} {alert.plugin}"
    msg.set_content(body.strip() + "\n")
    return msg
