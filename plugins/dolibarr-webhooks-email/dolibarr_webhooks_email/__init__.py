"""dolibarr-webhooks plugin ``email``: send an email (SMTP, Jinja2 templates in English and
French, plain text and HTML) when Dolibarr events match the configured rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from dolibarr_webhooks import ConfigError, Event, PermanentFailure, hookimpl
from dolibarr_webhooks.events import matches

from .config import Rule, Settings, parse_settings, rule_key
from .render import build_message, environment, recipients, render_rule
from .smtp import send_messages

__version__ = "0.1.0"


@hookimpl
def handled_events(config: dict[str, Any]) -> list[str] | None:
    """Validate the settings and templates at start-up; the union of the rules' events."""
    settings = parse_settings(config)
    check_templates(settings)
    patterns: set[str] = set()
    for rule in settings.rules:
        if rule.events is None:
            return None
        patterns.update(rule.events)
    return sorted(patterns)


@hookimpl
def handle_event(event: Event, config: dict[str, Any]) -> None:
    """One message per matching rule, all over one SMTP connection."""
    settings = parse_settings(config)
    messages = []
    without_recipient: list[Rule] = []
    for rule in settings.rules:
        if not matches(event.trigger_code, rule.events):
            continue
        to = recipients(event, rule)
        if not to:
            without_recipient.append(rule)
            continue
        try:
            rendered = render_rule(event, rule, settings.templates_dir)
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


def check_templates(settings: Settings) -> None:
    """Compile the user's templates and each rule's subject and template name, so typos stop start-up."""
    env = environment(settings.templates_dir)
    if settings.templates_dir:
        root = Path(settings.templates_dir)
        for path in sorted(root.rglob("*")):
            if path.suffix in (".txt", ".html") and path.is_file():
                name = path.relative_to(root).as_posix()
                try:
                    env.get_template(name)
                except jinja2.TemplateSyntaxError as exc:
                    raise ConfigError("DOLIBARR_WEBHOOKS_EMAIL_TEMPLATES_DIR",
                                      f"{name} line {exc.lineno}: {exc.message}") from exc
    for rule in settings.rules:
        if rule.subject:
            try:
                env.from_string(rule.subject)
            except jinja2.TemplateSyntaxError as exc:
                raise ConfigError(rule_key(rule.name, "subject"), f"bad template: {exc.message}") from exc
        if rule.template:
            name = f"{rule.language}/{rule.template}.body.txt"
            try:
                env.get_template(name)
            except jinja2.TemplateNotFound:
                raise ConfigError(rule_key(rule.name, "template"),
                                  f"no template {name} in the templates folder or the packaged ones") from None


__all__ = ["handled_events", "handle_event", "parse_settings", "check_templates"]
