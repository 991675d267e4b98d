"""The one rule that names a Dolibarr object for a person, whatever its type.

Dolibarr's ``ref`` is not a name on every object: it is null for a new third party, a new
contact or a shipment not yet validated, the bare id for contacts, users, members and
agenda events, ``(PROV12)`` for a draft document, and the third party's name on some
COMPANY_MODIFY. The label is, in order:

1. the business reference (``newref`` on ``*_VALIDATE``, else ``ref``) when it is not the
   bare id; a draft's ``(PROVn)`` reads ``draft (PROVn)``;
2. the name a person recognises: a third party's name, a contact's or member's full name,
   a user's login, a category's, agenda event's or bank account's label, a project's title;
3. ``#id``.
"""

from __future__ import annotations

from typing import Any

VALIDATE_SUFFIX = "_VALIDATE"

DRAFT = {"en": "draft", "fr": "brouillon"}

# Which properties name an object of each type (Dolibarr's ``element``), best first.
NAME_KEYS: dict[str, tuple[str, ...]] = {
    "societe": ("name", "nom", "name_alias"),
    "user": ("login",),
    "category": ("label",),
    "action": ("label",),
    "actioncomm": ("label",),
    "bank_account": ("label",),
    "project": ("title",),
    "project_task": ("label",),
    "ticket": ("subject",),
}
PERSONS = ("contact", "member", "adherent")
# For any other type: the first of these the object has.
ANY_NAME_KEYS = ("label", "name", "title", "subject", "login")


def encodable(text: str) -> str:
    """``text``, or its lone surrogates as ``\\udXXX`` escapes: a body may carry ``"\\ud800"``
    (PHP never writes one, a forger may), which no database column, log line or plugin
    message can hold as text. The object keeps them: its JSON writes them back as escapes."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def text(value: Any) -> str | None:
    """A scalar as text (``120.0`` as ``120``), always encodable; None for null, empty and containers."""
    if value is None or value == "" or isinstance(value, (dict, list, bool)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return encodable(str(value)).strip() or None


def business_ref(code: str, obj: dict[str, Any]) -> str | None:
    """The reference Dolibarr shows for the object; on ``*_VALIDATE`` the definitive one."""
    if code.endswith(VALIDATE_SUFFIX) and text(obj.get("newref")):
        return text(obj["newref"])  # the object still carries its provisional (PROV311) ref
    return text(obj.get("ref"))


def is_draft_ref(ref: str) -> bool:
    return ref.startswith("(PROV") and ref.endswith(")")


def person_name(obj: dict[str, Any]) -> str | None:
    name = " ".join(t for t in (text(obj.get("firstname")), text(obj.get("lastname"))) if t)
    return name or None


def object_label(code: str, obj: dict[str, Any], language: str = "en") -> str | None:
    """The object's label under the rule above; None only for an object with no id at all."""
    element = text(obj.get("element")) or ""
    object_id = text(obj.get("id", obj.get("rowid")))
    ref = business_ref(code, obj)
    if ref and ref != object_id:
        return f"{DRAFT.get(language, DRAFT['en'])} {ref}" if is_draft_ref(ref) else ref
    if element in PERSONS:
        name = person_name(obj) or text(obj.get("login")) or text(obj.get("societe"))
    else:
        keys = NAME_KEYS.get(element, ANY_NAME_KEYS)
        name = next((t for t in map(text, (obj.get(k) for k in keys)) if t), None)
        if name is None and element not in NAME_KEYS:
            name = person_name(obj)
    if name:
        return name
    return f"#{object_id}" if object_id else None
