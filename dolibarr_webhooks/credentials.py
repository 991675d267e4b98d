"""Credentials: the rules that say which names hold one (the keys of the objects Dolibarr posts;
settings, query parameters and headers), and the masking of those objects.

Dolibarr serialises its objects whole. Read from its classes (20 to 23) and seen in bodies
posted by a real 22.0.4:

- ``User`` (USER_CREATE, USER_MODIFY, USER_NEW_PASSWORD...): ``pass`` and ``pass_indatabase``
  in clear text when an admin types a password, ``pass_indatabase_crypted`` (its hash),
  ``pass_crypted``, ``pass_temp``, ``api_key`` (clear text, or ``dolcrypt:`` encrypted),
  ``clicktodial_password``; the same again in ``oldcopy`` on 20 to 22;
- ``Adherent`` (MEMBER_*): ``pass`` in clear text and ``pass_indatabase_crypted``;
- ``Societe`` (COMPANY_*): ``webservices_key``;
- objects of modules that keep a connection to another system (mail collectors, payment
  and OAuth modules): ``password``, ``token``, ``secret``, ``*_key``.

Bank accounts (``Account``, ``CompanyBankAccount``) carry account numbers, not credentials:
they are kept. The rule, also documented in README.rst:

1. ``db``, the database handler Dolibarr 20 to 22 leaves on each line, is removed.
2. A key holds a credential when it is in ``DEFAULT_KEYS`` or ``DOLIBARR_WEBHOOKS_SCRUB_KEYS``
   (which add to the default, never replace it), or when a word of its name (split on ``_``,
   ``-``, ``.``, spaces and camelCase) is one of ``SECRET_WORDS``, or its last word is ``key``
   (``api_key``, ``webservices_key``, ``privateKey``) and the name is not in ``NOT_SECRET``.
3. A credential that has a value is replaced by ``MARKER``, at every depth, so that a reader
   sees a value was there; ``null``, ``""`` and ``[]`` are left as they are.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Iterable

MARKER = "[scrubbed]"

# Bumped whenever the rule below changes, so that ``check`` finds events stored under an older one.
RULE_VERSION = 1

DEFAULT_KEYS = frozenset({
    "pass", "pass_crypted", "pass_indatabase", "pass_indatabase_crypted", "pass_temp", "api_key",
    "clicktodial_password", "webservices_key", "password", "oauth_token", "token",
})

SECRET_WORDS = frozenset({"pass", "passwd", "password", "pwd", "passphrase", "secret", "token", "apikey",
                          "credential", "credentials"})

# Ends in "key" but names no credential: Dolibarr's import batch id, and a generic map key.
NOT_SECRET = frozenset({"import_key", "key"})

# The other rule, for names of settings, query parameters and headers (log lines, check's
# findings, the plugins' credentials in Settings.sensitive_values): any part of the name,
# since masking one value too many in a line of log costs nothing. The rule above is stricter
# (whole words: "author", "monkey" stay) because a masked value is lost from the stored event.
# A Slack incoming-webhook URL is a credential too.
SENSITIVE_NAME = re.compile(r"token|secret|passw|pwd|key|sig|auth|credential|session|cookie|webhook_url",
                            re.IGNORECASE)

_WORDS = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")

_EMPTY = (None, "", [])

MAX_REMEMBERED = 20_000  # key names; Dolibarr's objects use a few hundred


def _words(key: str) -> list[str]:
    return [w for w in _WORDS.split(key.strip()) if w]


class Scrubber:
    """Masks the credentials of Dolibarr objects; one per set of extra keys (see ``for_keys``)."""

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        self.extra_keys = frozenset(k.strip().lower() for k in extra_keys if k.strip())
        # The same few hundred key names come back in every body: each name is decided once,
        # and a mapping is then cleaned with two set operations done in C (see ``clean``).
        self._seen: set[Any] = set()
        self._credentials: set[Any] = set()
        self.fingerprint = hashlib.sha256(
            f"{RULE_VERSION}:{','.join(sorted(self.extra_keys))}".encode()).hexdigest()[:16]

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def for_keys(extra_keys: tuple[str, ...] = ()) -> Scrubber:
        return Scrubber(extra_keys)

    def is_credential(self, key: Any) -> bool:
        return key in self._credentials or (key not in self._seen and bool(self._learn((key,))))

    def _learn(self, keys: Iterable[Any]) -> set[Any]:
        """Decide ``keys``; returns the credentials among them. Remembered up to a bound, so
        that bodies full of made-up key names cannot grow a worker's memory."""
        found = {key for key in keys if isinstance(key, str) and self._decide(key)}
        if len(self._seen) < MAX_REMEMBERED:
            self._seen.update(keys)
            self._credentials.update(found)
        return found

    def _decide(self, key: str) -> bool:
        lowered = key.strip().lower()
        if lowered in DEFAULT_KEYS or lowered in self.extra_keys:
            return True
        if lowered in NOT_SECRET:
            return False
        words = [w.lower() for w in _words(key)]
        if any(w in SECRET_WORDS for w in words):
            return True
        return bool(words) and (words[-1] == "key" or words[-1].endswith("apikey"))

    def clean(self, mapping: dict[str, Any]) -> None:
        """Scrub one mapping in place (its children are the caller's walk)."""
        keys = mapping.keys()
        hits = keys & self._credentials
        if not keys <= self._seen:
            hits |= self._learn(keys - self._seen)
        for key in hits:
            if mapping[key] not in _EMPTY:
                mapping[key] = MARKER
        if "db" in mapping:
            del mapping["db"]

    def scrub(self, value: Any) -> Any:
        """A copy of ``value`` with every mapping cleaned, at every depth, in one walk without
        recursion (containers are copied as they are reached; scalars are shared)."""
        root = [value]
        stack: list[tuple[Any, Any]] = [(root, 0)]
        while stack:
            parent, slot = stack.pop()
            item = parent[slot]
            if isinstance(item, dict):
                item = parent[slot] = dict(item)
                self.clean(item)
                stack.extend((item, key) for key, child in item.items() if isinstance(child, (dict, list)))
            elif isinstance(item, list):
                item = parent[slot] = list(item)
                stack.extend((item, index) for index, child in enumerate(item) if isinstance(child, (dict, list)))
        return root[0]

    def scrub_raw(self, raw: bytes) -> bytes:
        """Mask ``"key": value`` pairs in a body that does not parse as JSON (kept in quarantine)."""
        def mask(match: re.Match[bytes]) -> bytes:
            key = match.group(3).decode("utf-8", "replace")
            value = match.group(4)
            if not self.is_credential(key) or value in (b'""', b"null", b"[]", _MARKER_JSON):
                return match.group(0)
            return match.group(1) + _MARKER_JSON
        return _RAW_PAIR.sub(mask, raw)


def scrubber_for(source: Any | None) -> Scrubber:
    """The scrubber of a source (``config.Source``, its ``scrub_keys`` added to the rule); the
    default rule's for a source no longer configured (None)."""
    return Scrubber.for_keys(tuple(source.scrub_keys) if source is not None else ())


def expected_rules(sources: dict[str, Any]) -> tuple[dict[str, str], str]:
    """The fingerprint each configured source's events are scrubbed under, and the one of a
    source no longer configured (the default rule)."""
    expected = {name: scrubber_for(source).fingerprint for name, source in sources.items()}
    return expected, scrubber_for(None).fingerprint


_MARKER_JSON = b'"' + MARKER.encode() + b'"'
_RAW_PAIR = re.compile(rb'(("((?:[^"\\]|\\.){1,200})")\s*:\s*)("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null)')
