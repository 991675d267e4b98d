"""Human words for an event: the one line the log handler prints, and the pieces
(amounts, names, labels) that notification plugins reuse in their messages. Every piece
taken from the object is ``labels.encodable``: a forged body's field may hold a lone
surrogate, which no message, page or log line can."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from .events import Event, label, noun_and_verb
from . import labels
from .labels import object_label

AMOUNT_ELEMENTS = {"facture", "propal", "commande", "invoice_supplier", "order_supplier", "supplier_proposal"}


def to_decimal(value: Any) -> Decimal | None:
    """Dolibarr amounts come as ``"2243.76000000"``, ``2243.76`` or ``120``."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def format_amount(value: Any, currency: str | None = None, language: str = "en") -> str | None:
    """``2,243.76 EUR`` (English) or ``2 243,76 EUR`` (French); ``None`` if there is no amount."""
    amount = to_decimal(value)
    if amount is None:
        return None
    text = f"{amount:,.2f}"
    if language == "fr":
        text = text.replace(",", "\u202f").replace(".", ",")
    return f"{text} {currency}".strip() if currency else text


def currency(obj: dict[str, Any]) -> str | None:
    return labels.text(obj.get("multicurrency_code"))


def person_name(obj: dict[str, Any]) -> str | None:
    """A contact's or member's full name (labels.person_name), else the object's name."""
    return labels.person_name(obj) or labels.text(obj.get("name"))


def object_name(event: Event, language: str = "en") -> str | None:
    """The object as a person calls it (labels.object_label), in ``language``."""
    if language == "en" and event.label:
        return event.label
    return object_label(event.trigger_code, event.object, language) or event.label


def thirdparty_label(obj: dict[str, Any], language: str = "en") -> str | None:
    """The third party's name when the object carries it (23 nests it), else its id."""
    nested = obj.get("thirdparty")
    name = labels.text(nested.get("name")) if isinstance(nested, dict) else None
    if name:
        return name
    socid = labels.text(obj.get("socid") or obj.get("fk_soc"))
    if socid not in (None, "0"):
        return ("tiers " if language == "fr" else "third party ") + socid
    return None


def summary(event: Event, language: str = "en") -> str:
    """One human line, e.g. ``Invoice FA2611-0042 validated: 2,243.76 EUR incl. tax (third party 42)``."""
    obj = event.object
    words = noun_and_verb(event.trigger_code, language)
    if words is None:
        what = event.trigger_code
        ident = object_name(event, language)
        subject = f"{what} on {event.element or 'object'} {ident}" if ident else what
        return f"{subject} (test)" if event.test else subject
    noun, verb = words
    element = event.element or ""
    name = object_name(event, language)
    if name and element in ("action", "actioncomm") and not name.startswith("#"):
        name = f"« {name} »" if language == "fr" else f'"{name}"'  # an agenda label is a sentence
    details: list[str] = []
    tail: list[str] = []
    if element == "societe":
        if obj.get("email"):
            tail.append(str(obj["email"]))
    elif element == "contact":
        if obj.get("email"):
            tail.append(str(obj["email"]))
    elif element == "product":
        if obj.get("label") and obj["label"] != name:
            details.append(str(obj["label"]))
    elif element == "project":
        if obj.get("title") and obj["title"] != name:
            details.append(str(obj["title"]))
    elif element in AMOUNT_ELEMENTS or element == "payment":
        if element == "payment":
            total = obj.get("amount", obj.get("total"))
        else:
            # The document's currency goes with the multicurrency total; total_ttc is in the company's.
            total = obj.get("multicurrency_total_ttc") if obj.get("multicurrency_code") else None
            total = total if total not in (None, "") else obj.get("total_ttc")
        amount = format_amount(total, currency(obj), language)
        if amount:
            incl = (" TTC" if language == "fr" else " incl. tax") if element != "payment" else ""
            details.append(amount + incl)
        if element == "payment" and isinstance(obj.get("amounts"), dict) and obj["amounts"]:
            label_invoices = "factures" if language == "fr" else "invoices"
            tail.append(f"{label_invoices} " + ", ".join(str(k) for k in obj["amounts"]))
    if element in ("contact", "project") or element in AMOUNT_ELEMENTS or element == "payment":
        third = thirdparty_label(obj, language)
        if third:
            tail.append(third)
    line = f"{noun} {name} {verb}" if name else f"{noun} {verb}"
    if details:
        line += ": " + ", ".join(details)
    if tail:
        line += " (" + ", ".join(tail) + ")"
    if event.test:
        line += " (test)"
    return labels.encodable(line)  # the details and the tail quote the object's fields as they came


__all__ = ["summary", "format_amount", "to_decimal", "currency", "person_name", "thirdparty_label",
           "noun_and_verb", "label"]
