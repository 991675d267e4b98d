"""Turn the raw bytes Dolibarr posts into a trigger code and a scrubbed object.

No Flask here: the receiver, the CLI (re-processing quarantined bodies) and the
tests all go through these functions.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Iterable

from .. import fastjson
from ..credentials import Scrubber
from ..events import Event, canonical_code
from ..ids import new_event_id
from ..labels import business_ref, encodable, object_label, text

# Keys the widely copied Node guide uses instead of Dolibarr's.
CODE_KEYS = ("triggercode", "event", "action")
OBJECT_KEYS = ("object", "data")


class ParseError(ValueError):
    """The body is not a JSON object (400, or quarantine when authenticated)."""


class MissingTriggerCode(ValueError):
    """The body is JSON but names no trigger code (422)."""


def body_sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def is_empty_body(raw: bytes) -> bool:
    """Dolibarr posts an empty body when json_encode fails (invalid UTF-8 in the object): there is
    nothing to parse, then or ever."""
    return not raw.strip()


def parse_body(raw: bytes, scrub_keys: Iterable[str] = ()) -> tuple[str, dict[str, Any]]:
    """Return ``(trigger code as sent, object)`` from a raw request body, the object scrubbed
    at every depth: Dolibarr's database handler removed, credentials (and ``scrub_keys``)
    masked, by the rule of ``credentials``."""
    if is_empty_body(raw):
        raise ParseError("empty body")
    try:
        data = fastjson.loads(raw, clean=Scrubber.for_keys(tuple(scrub_keys)).clean)
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
    return encodable(code.strip()), obj


def scrub(value: Any, keys: Iterable[str] = ()) -> Any:
    """A copy of ``value`` scrubbed as ``parse_body`` scrubs, for what was stored before."""
    return Scrubber.for_keys(tuple(keys)).scrub(value)


def object_identity(code: str, obj: dict[str, Any]) -> dict[str, str | None]:
    """The fields of an ``Event`` that come from the object: type, id, definitive ref, entity
    and the label a person recognises (``labels.object_label``)."""
    return {
        "element": text(obj.get("element")),
        "object_id": text(obj.get("id", obj.get("rowid"))),
        "ref": business_ref(code, obj),
        "entity": text(obj.get("entity")),
        "label": object_label(code, obj),
    }


def event_from_body(raw: bytes, *, source: str = "default", dolibarr_url: str | None = None,
                    scrub_keys: Iterable[str] = (), test: bool = False, event_id: str | None = None,
                    received_at=None):
    """Parse, scrub and identify a raw body: the one path from bytes to an ``Event``.

    Raises ``ParseError`` or ``MissingTriggerCode``.
    """
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
