"""Everything a plugin may use from the core, in one place.

A plugin imports from ``dolibarr_webhooks`` (``hookimpl``, ``Event``, the exceptions that steer
the worker) and from this module, nothing else: what is here is documented in
docs/plugins.rst and kept stable; the rest of the core may move. A test checks that the
plugins shipped under ``plugins/`` keep to it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from .events import FAMILIES, canonical_code, label, matches, noun_and_verb, split_code
from .settings import parse_bool
from .describe import currency, format_amount, object_name, person_name, summary, thirdparty_label, to_decimal
from .events import CARD_PATHS, Event
from .exceptions import ConfigError, PermanentFailure, PluginDisabled, RetryLater
from .pipeline.notices import DEAD, DELIVERED, DIGEST, RECOVERED, Alert, Outcome
from .pipeline.parse import scrub

__all__ = [
    # events and their words
    "Event", "CARD_PATHS", "summary", "object_name", "person_name", "thirdparty_label", "format_amount",
    "to_decimal", "currency", "label", "noun_and_verb", "split_code", "FAMILIES",
    # choosing events
    "matches", "canonical_code",
    # settings
    "parse_bool", "ConfigError", "PluginDisabled",
    # steering the worker
    "PermanentFailure", "RetryLater", "retry_after",
    # saying what happened
    "plugin_logger",
    # what happened to deliveries
    "Outcome", "Alert", "DELIVERED", "DEAD", "RECOVERED", "DIGEST",
    # payloads
    "scrub",
]


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` header (delay-seconds or HTTP-date), for
    ``RetryLater(after=...)``; None when the header is absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def plugin_logger(name: str) -> logging.Logger:
    """The logger of plugin ``name``: its lines go where the service's own go, at the service's
    level and format, with request ids, and with secrets masked. (A logger of the plugin's own
    module name has no handler in the service: Python drops its INFO lines and prints its
    warnings bare.)"""
    return logging.getLogger(f"dolibarr_webhooks.plugin.{name}")
