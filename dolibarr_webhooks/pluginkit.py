"""Everything a plugin may use from the core, in one place.

A plugin imports from ``dolibarr_webhooks`` (``hookimpl``, ``Event``, the exceptions that steer
the worker) and from this module, nothing else: what is here is documented in
docs/plugins.rst and kept stable; the rest of the core may move. A test checks that the
plugins shipped under ``plugins/`` keep to it.
"""

from __future__ import annotations

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
    "PermanentFailure", "RetryLater",
    # what happened to deliveries
    "Outcome", "Alert", "DELIVERED", "DEAD", "RECOVERED", "DIGEST",
    # payloads
    "scrub",
]
