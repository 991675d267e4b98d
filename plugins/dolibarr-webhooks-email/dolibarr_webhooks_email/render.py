"""Turn an event and a rule into an email: recipients, Jinja2 templates, the MIME message."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import Any

from jinja2 import (ChoiceLoader, Environment, FileSystemLoader, PackageLoader, Template, TemplateNotFound,
                    pass_context, select_autoescape)

from dolibarr_webhooks import Event
from dolibarr_webhooks.events import FAMILIES, label, split_code
from dolibarr_webhooks.describe import (currency, format_amount, noun_and_verb, object_name, summary,
                                        thirdparty_label, to_decimal)

from .config import Rule, parse_addresses

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
PARTS = ("subject.txt", "body.txt", "body.html")
DATE_FORMATS = {"en": "%Y-%m-%d", "fr": "%d/%m/%Y"}


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None
    template: str  # the base name the body came from, e.g. ``fr/invoice``


@functools.lru_cache(maxsize=8)
def environment(templates_dir: str | None) -> Environment:
    """The user's folder first, then the packaged templates; HTML autoescaped.

    Cached per folder so templates are compiled once per process; Jinja2 still reloads a
    user template whose file changed.
    """
    loaders: list[Any] = [FileSystemLoader(templates_dir)] if templates_dir else []
    loaders.append(PackageLoader("dolibarr_webhooks_email", "templates"))
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = _money
    env.filters["date"] = _date
    return env


@pass_context
def _money(ctx: Any, value: Any, code: str | None = None) -> str:
    """``{{ object.total_ht | money }}``: the amount in the rule's language and the object's currency."""
    return format_amount(value, code or ctx.get("currency"), ctx.get("language", "en")) or ""


@pass_context
def _date(ctx: Any, value: Any) -> str:
    """``{{ object.date_lim_reglement | date }}``: Dolibarr's Unix timestamps as a day."""
    seconds = to_decimal(value)
    if seconds is None or seconds <= 0:
        return ""
    day = datetime.fromtimestamp(int(seconds), tz=timezone.utc)
    return day.strftime(DATE_FORMATS.get(ctx.get("language"), DATE_FORMATS["en"]))


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


def render_rule(event: Event, rule: Rule, templates_dir: str | None = None) -> Rendered:
    """Subject, plain text and HTML for one event and rule; raises jinja2 errors."""
    env = environment(templates_dir)
    bases = template_bases(event, rule)
    ctx = context(event, rule)
    subject_template: Template = (env.from_string(rule.subject) if rule.subject
                                  else env.select_template([b + ".subject.txt" for b in bases]))
    text_template = env.select_template([b + ".body.txt" for b in bases])
    base = str(text_template.name)[: -len(".body.txt")]
    html_template: Template | None
    try:
        html_template = env.get_template(base + ".body.html")
    except TemplateNotFound:
        html_template = None
    # Only the HTML beside the text body that won: a user's text-only override must not
    # be sent with the packaged HTML of the same name.
    if html_template is not None and text_template.filename and html_template.filename != (
            text_template.filename[: -len("txt")] + "html"):
        html_template = None
    return Rendered(
        # One line; the narrow no-break spaces of French amounts are kept.
        subject=re.sub(r"[ \t\r\n]+", " ", subject_template.render(ctx)).strip(),
        text=text_template.render(ctx).strip() + "\n",
        html=html_template.render(ctx) if html_template is not None else None,
        template=base,
    )


def build_message(event: Event, rule: Rule, rendered: Rendered, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = rendered.subject
    msg["From"] = rule.sender
    msg["To"] = ", ".join(to)
    if rule.reply_to:
        msg["Reply-To"] = rule.reply_to
    msg["Date"] = formatdate(localtime=True)
    # The same id on every retry of this event and rule, so receivers can drop duplicates.
    domain = parseaddr(rule.sender)[1].rpartition("@")[2] or "dolibarr-webhooks"
    msg["Message-ID"] = f"<{event.id}.{rule.index}@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg["X-Dolibarr-Trigger"] = event.trigger_code
    msg["X-Dolibarr-Webhooks-Event"] = event.id
    msg.set_content(rendered.text)
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html")
    return msg
