"""dolibarr-webhooks plugin ``email``: send an email (SMTP, Jinja2 templates in English and
French, plain text and HTML) when Dolibarr events match the configured rules, and alert a
person when deliveries fail."""

from __future__ import annotations

from typing import Any

import jinja2

from dolibarr_webhooks import Event, PermanentFailure, hookimpl
from dolibarr_webhooks.pluginkit import Alert, handled_by, matches

from .alerts import alert_message
from .config import Rule, Settings, parse_settings
from .render import build_message, recipients, render_rule
from .smtp import send_messages

__version__ = "0.1.0"


@hookimpl
def read_settings(config: dict[str, Any]) -> Settings:
    """Check the settings and compile the templates, once, at start-up."""
    return parse_settings(config)


@hookimpl
def handled_events(settings: Settings) -> list[str] | None:
    """The union of the rules' events (none when only alerts are configured)."""
    return handled_by(settings.rules)


@hookimpl
def handle_event(event: Event, settings: Settings) -> None:
    """One message per rule of this event, all over one SMTP connection."""
    messages = []
    without_recipient: list[Rule] = []
    for rule in settings.rules:
        # The core chose this plugin for the union of the rules' events; each rule has its own.
        if not matches(event.trigger_code, rule.events):
            continue
        to = recipients(event, rule)
        if not to:
            without_recipient.append(rule)
            continue
        try:
            rendered = render_rule(event, rule, settings.templates)
        except jinja2.TemplateError as exc:
            # A broken template fails the same way on every retry: dead, replay once fixed.
            raise PermanentFailure(f"email rule {rule.name}: template error: {exc}") from exc
        messages.append(build_message(event, rule, rendered, to))
    if messages:
        send_messages(settings, messages)
    if without_recipient:
        # Visible as a dead delivery (replayable once the config has a fixed address)
        # rather than an email silently never sent.
        sent = f" ({len(messages)} other message(s) sent)" if messages else ""
        raise PermanentFailure("; ".join(
            f"no recipient for {event.trigger_code} in email rule {rule.name}: "
            f"the object has no address in {rule.to_field!r} and the rule has no fixed 'to'"
            for rule in without_recipient) + sent)


@hookimpl
def alert(alert: Alert, settings: Settings) -> None:
    """Mail the alert to ``ALERT_TO``; the core bounds how often, and retries a failed send."""
    if settings.alert_to:
        send_messages(settings, [alert_message(alert, settings)])


__all__ = ["read_settings", "handled_events", "handle_event", "alert", "parse_settings"]
