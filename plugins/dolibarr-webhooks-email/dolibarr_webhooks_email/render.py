"""Turn an event and a rule into an email: recipients, Jinja2 templates, the MIME message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any, Sequence

from jinja2 import Template

from dolibarr_webhooks import Event
from dolibarr_webhooks.pluginkit import (FAMILIES, currency, encodable, format_amount, label, noun_and_verb,
                                         object_name, split_code, summary, thirdparty_label)

from .config import Rule, parse_addresses
from .templating import Templates

# Template family names, by Dolibarr object type (``element``).
FAMILY_BY_ELEMENT = {
    "societe": "thirdparty",
    "contact": "contact",
    "facture": "invoice",
    "payment": "payment",
    "propal": "proposal",
    "commande": "order",
    "product": "product",
    "project": "project",
}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None
    template: str  # the base name the body came from, e.g. ``fr/invoice``


def family(event: Event) -> str | None:
    element = event.element
    if not element:
        split = split_code(event.trigger_code)
        element = FAMILIES[split[0]][0] if split else None
    return FAMILY_BY_ELEMENT.get(element or "")


def template_bases(event: Event, rule: Rule) -> list[str]:
    """Most specific first: the rule's template, the trigger code, the family, ``default``."""
    names = [rule.template] if rule.template else []
    names.append(event.trigger_code)
    fam = family(event)
    if fam:
        names.append(fam)
    names.append("default")
    return [f"{rule.language}/{name}" for name in names]


def lookup(obj: dict[str, Any], path: str) -> Any:
    """``email`` or ``thirdparty.email`` (Dolibarr 23 nests the third party)."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def recipients(event: Event, rule: Rule) -> list[str]:
    """The rule's fixed addresses plus those found in the object's field, each address once."""
    found = list(rule.to)
    if rule.to_field:
        value = lookup(event.object, rule.to_field)
        if isinstance(value, (str, list)):
            found.extend(parse_addresses(value))
    seen: set[str] = set()
    unique = []
    for item in found:
        addr = parseaddr(item)[1].lower()
        if addr not in seen:
            seen.add(addr)
            unique.append(item)
    return unique


def _name(event: Event, language: str) -> str | None:
    obj = event.object
    if event.element == "product":
        return obj.get("label") or event.ref
    if event.element == "project":
        return obj.get("title") or event.ref
    if event.element in ("societe", "contact", "user", "member", "category"):
        return object_name(event, language)
    return None


def context(event: Event, rule: Rule) -> dict[str, Any]:
    """What every template sees; amounts already formatted for the rule's language."""
    obj = event.object
    lang = rule.language
    cur = currency(obj)
    noun, verb = noun_and_verb(event.trigger_code, lang) or (event.trigger_code, "")
    return {
        "event": event,
        "object": obj,
        "code": event.trigger_code,
        "language": lang,
        "label": label(event.trigger_code, lang),
        "noun": noun,
        "verb": verb,
        "summary": summary(event, lang),
        "family": family(event),
        "ref": event.ref,
        "name": _name(event, lang),
        "object_label": object_name(event, lang),
        "thirdparty": thirdparty_label(obj, lang),
        "email": obj.get("email") or None,
        "currency": cur,
        "total_ht": format_amount(obj.get("total_ht"), cur, lang),
        "total_tva": format_amount(obj.get("total_tva"), cur, lang),
        "total_ttc": format_amount(obj.get("total_ttc"), cur, lang),
        "amount": format_amount(obj.get("amount"), cur, lang),
        "card_url": event.card_url,
        "dolibarr_url": event.dolibarr_url,
    }


def render_rule(event: Event, rule: Rule, templates: Templates) -> Rendered:
    """Subject, plain text and HTML for one event and rule, from the templates compiled at
    start-up; raises jinja2 errors."""
    bases = template_bases(event, rule)
    ctx = context(event, rule)
    subject_template: Template = (templates.string(rule.subject) if rule.subject
                                  else templates.first(b + ".subject.txt" for b in bases))
    text_template = templates.first(b + ".body.txt" for b in bases)
    html_template = templates.html_beside(text_template)
    # encodable: a field of a forged body may hold a lone surrogate, which no message can.
    return Rendered(
        # One line; the narrow no-break spaces of French amounts are kept.
        subject=encodable(one_line(subject_template.render(ctx))),
        text=encodable(text_template.render(ctx).strip() + "\n"),
        html=encodable(html_template.render(ctx)) if html_template is not None else None,
        template=str(text_template.name)[: -len(".body.txt")],
    )


def one_line(text: str) -> str:
    """A header's value: runs of spaces and line breaks as one space (a no-break space kept)."""
    return re.sub(r"[ \t\r\n]+", " ", text).strip()


def new_message(subject: str, sender: str, to: Sequence[str], unique: str | None = None) -> EmailMessage:
    """A message with the headers every email of the plugin carries. ``unique`` makes the
    Message-ID (the same on every retry, so receivers can drop duplicates); else a fresh one."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or "dolibarr-webhooks"
    msg["Message-ID"] = f"<{unique}@{domain}>" if unique else make_msgid(domain=domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    return msg


def build_message(event: Event, rule: Rule, rendered: Rendered, to: list[str]) -> EmailMessage:
    msg = new_message(rendered.subject, rule.sender, to, unique=f"{event.id}.{rule.index}")
    if rule.reply_to:
        msg["Reply-To"] = rule.reply_to
    msg["X-Dolibarr-Trigger"] = event.trigger_code
    msg["X-Dolibarr-Webhooks-Event"] = event.id
    msg.set_content(rendered.text)
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html")
    return msg
