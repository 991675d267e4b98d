"""Everything a plugin may use from the core, in one place.

A plugin imports from ``dolibarr_webhooks`` (``hookimpl``, ``Event``, the exceptions that steer
the worker) and from this module, nothing else: what is here is documented in
docs/plugins.rst and kept stable; the rest of the core may move. A test checks that the
plugins shipped under ``plugins/`` keep to it.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from .describe import currency, format_amount, object_name, person_name, summary, thirdparty_label, to_decimal
from .events import CARD_PATHS, FAMILIES, Event, canonical_code, label, matches, noun_and_verb, split_code
from .exceptions import ConfigError, PermanentFailure, PluginDisabled, RetryLater
from .fastjson import dumps as json_text
from .labels import encodable
from .logs import redact as redact_url
from .logs import scrub as redact_text
from .pipeline.notices import DEAD, DELIVERED, DIGEST, RECOVERED, Alert, Outcome
from .pipeline.parse import scrub
from .settings import not_utf8, parse_bool
from .signing import HEADERS as SIGNATURE_HEADERS
from .signing import sign, signature_headers, signing_key

__all__ = [
    # events and their words
    "Event", "CARD_PATHS", "summary", "object_name", "person_name", "thirdparty_label", "format_amount",
    "to_decimal", "currency", "label", "noun_and_verb", "split_code", "FAMILIES",
    # choosing events
    "matches", "canonical_code", "handled_by",
    # settings
    "parse_bool", "not_utf8", "ConfigError", "PluginDisabled",
    # steering the worker
    "PermanentFailure", "RetryLater", "retry_after", "combine_failures",
    # saying what happened
    "plugin_logger",
    # what happened to deliveries
    "Outcome", "Alert", "DELIVERED", "DEAD", "RECOVERED", "DIGEST",
    # payloads, secrets and signatures
    "scrub", "json_text", "encodable", "redact_url", "redact_text", "signing_key", "sign", "signature_headers",
    "SIGNATURE_HEADERS",
]


def handled_by(targets: Iterable[Any]) -> list[str] | None:
    """What ``handled_events`` returns for a plugin whose targets (channels, endpoints, rules)
    each have ``events``, a list of codes or patterns or ``None`` for every event: the union
    of their patterns, ``None`` when one target takes everything, ``[]`` without targets."""
    targets = list(targets)
    if any(target.events is None for target in targets):
        return None
    return sorted({pattern for target in targets for pattern in target.events})


def retry_after(value: str | Mapping[str, Any] | None) -> float | None:
    """Seconds from a Retry-After value (delay-seconds or an HTTP date), or from the headers
    that hold one (found whatever their case); None when absent or unreadable."""
    if isinstance(value, Mapping):
        value = next((v for k, v in value.items() if str(k).lower() == "retry-after"), None)
    if isinstance(value, (list, tuple)):  # some clients keep every value of a repeated header
        value = value[0] if value else None
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # "-0000": UTC by RFC 5322
    return max(0.0, when.timestamp() - time.time())


def combine_failures(failures: Sequence[Exception],
                     transient: Callable[[str], Exception] = Exception) -> Exception:
    """One exception for the failures of one delivery's several targets (channels, endpoints),
    to raise after trying them all: retried if any target may still succeed.

    All permanent: ``PermanentFailure``. Only ``RetryLater`` besides permanent ones:
    ``RetryLater`` after the longest wait asked. Otherwise ``transient(message)``, retried on
    the core's backoff schedule. A single failure is returned as it is. A retry sends again
    to every target, those that succeeded included (at-least-once delivery).
    """
    if len(failures) == 1:
        return failures[0]
    message = "; ".join(dict.fromkeys(str(f) for f in failures))  # targets may share one error
    retryable = [f for f in failures if not isinstance(f, PermanentFailure)]
    if not retryable:
        return PermanentFailure(message)
    if all(isinstance(f, RetryLater) for f in retryable):
        return RetryLater(message, after=max(f.after for f in retryable if isinstance(f, RetryLater)))
    combined = transient(message)
    combined.__cause__ = next(f for f in retryable if not isinstance(f, RetryLater))
    return combined


def plugin_logger(name: str) -> logging.Logger:
    """The logger of plugin ``name``: its lines go where the service's own go, at the service's
    level and format, with request ids, and with secrets masked. (A logger of the plugin's own
    module name has no handler in the service: Python drops its INFO lines and prints its
    warnings bare.)"""
    return logging.getLogger(f"dolibarr_webhooks.plugin.{name}")
