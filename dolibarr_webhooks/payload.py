"""Turn the raw bytes Dolibarr posts into a trigger code and a scrubbed object.

No Flask here: the receiver, the CLI (re-processing quarantined bodies) and the
tests all go through these functions.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

from . import fastjson

# Dolibarr 20 to 22 serialise each line object whole, database handler included.
ALWAYS_SCRUBBED = frozenset({"db"})

# Keys the widely copied Node guide uses instead of Dolibarr's.
CODE_KEYS = ("triggercode", "event", "action")
OBJECT_KEYS = ("object", "data")

VALIDATE_SUFFIX = "_VALIDATE"


class ParseError(ValueError):
    """The body is not a JSON object (400, or quarantine when authenticated)."""


class MissingTriggerCode(ValueError):
    """The body is JSON but names no trigger code (422)."""


def body_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def parse_body(raw: bytes, scrub_keys: Iterable[str] = ()) -> tuple[str, dict[str, Any]]:
    """Return ``(trigger code as sent, object)`` from a raw request body, the object scrubbed
    of Dolibarr's database handler and of ``scrub_keys`` at every depth."""
    if not raw.strip():
        # Dolibarr posts an empty body when json_encode fails (invalid UTF-8 in the object).
        raise ParseError("empty body")
    try:
        data = fastjson.loads(raw, drop_keys=ALWAYS_SCRUBBED.union(scrub_keys))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParseError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ParseError("body is JSON but not an object")
    code = next((data[k] for k in CODE_KEYS if data.get(k) not in (None, "")), None)
    if isinstance(code, (int, float)) and not isinstance(code, bool):
        code = str(code)
    if not isinstance(code, str) or not code.strip():
        raise MissingTriggerCode("no trigger code: expected a non-empty 'triggercode'")
    obj = next((data[k] for k in OBJECT_KEYS if k in data), {})
    if obj == [] or obj is None:
        obj = {}  # PHP's json_encode writes an empty map as []
    elif not isinstance(obj, dict):
        obj = {"value": obj}
    return _storable(code.strip()), obj


def scrub(value: Any, keys: Iterable[str] = ()) -> Any:
    """Copy ``value`` without Dolibarr's database handler and the configured keys, at every depth."""
    drop = ALWAYS_SCRUBBED.union(keys)
    return _scrub(value, drop)


def _scrub(value: Any, drop: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_scrub(v, drop) for v in value]
    return value


def _storable(text: str) -> str:
    """``text``, or its lone surrogates as ``\\udXXX`` escapes: a body may carry ``"\\ud800"``
    (PHP never writes one, a forger may), which no database column can hold as text. The
    object keeps them: its JSON writes them back as escapes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def _text(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, (dict, list)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _storable(str(value))


def object_identity(code: str, obj: dict[str, Any]) -> dict[str, str | None]:
    """The fields of an ``Event`` that come from the object: type, id, definitive ref, entity."""
    ref = obj.get("ref")
    if code.endswith(VALIDATE_SUFFIX) and obj.get("newref"):
        # On *_VALIDATE the object still carries its provisional (PROV311) ref.
        ref = obj["newref"]
    return {
        "element": _text(obj.get("element")),
        "object_id": _text(obj.get("id", obj.get("rowid"))),
        "ref": _text(ref),
        "entity": _text(obj.get("entity")),
    }


def new_event_id() -> str:
    """Time-ordered, unique across hosts: milliseconds then 64 random bits."""
    import secrets
    import time

    return f"evt_{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


def event_from_body(raw: bytes, *, source: str = "default", dolibarr_url: str | None = None,
                    scrub_keys: Iterable[str] = (), test: bool = False, event_id: str | None = None,
                    received_at=None):
    """Parse, scrub and identify a raw body: the one path from bytes to an ``Event``.

    Raises ``ParseError`` or ``MissingTriggerCode``.
    """
    from datetime import datetime, timezone

    from .catalogue import canonical_code
    from .event import Event

    sent_code, obj = parse_body(raw, scrub_keys)
    code = canonical_code(sent_code)
    return Event(
        id=event_id or new_event_id(),
        trigger_code=code,
        object=obj,
        source=source,
        received_at=received_at or datetime.now(timezone.utc),
        body_sha256=body_sha256(raw),
        test=test or code == "TEST_TRIGGER_CODE",
        sent_code=sent_code if sent_code != code else None,
        dolibarr_url=dolibarr_url,
        **object_identity(code, obj),
    )
