"""Post Dolibarr events to Slack channels, as Block Kit messages, through incoming webhooks.

Settings (the plugin's config dict, from ``DOLIBARR_WEBHOOKS_SLACK_*`` and ``[plugins.slack]``):
``webhook_url`` (+ ``events``), ``timeout``, ``language``, and ``rules`` for several channels.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Mapping
from urllib.parse import urlsplit

from slack_sdk.webhook import WebhookClient, WebhookResponse

from dolibarr_webhooks import ConfigError, Event, PermanentFailure, PluginDisabled, RetryLater, hookimpl
from dolibarr_webhooks.events import matches
from dolibarr_webhooks.describe import (
    currency,
    format_amount,
    noun_and_verb,
    object_name,
    person_name,
    summary,
    thirdparty_label,
    to_decimal,
)
from dolibarr_webhooks.events import CARD_PATHS

__version__ = "0.1.0"

ENV = "DOLIBARR_WEBHOOKS_SLACK_"
TOML_RULES = "[plugins.slack] rules"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_AFTER = 30.0  # when a 429 comes without Retry-After
LANGUAGES = ("en", "fr")
TOP_KEYS = {"webhook_url", "events", "timeout", "language", "rules"}
RULE_KEYS = {"webhook_url", "events", "timeout", "language"}


class SlackUnavailable(Exception):
    """Slack cannot be reached, or answered 5xx/408 without Retry-After: the core's backoff retries it."""


@dataclass(frozen=True)
class Rule:
    """Where to post which events: one incoming webhook (one channel)."""

    name: str  # how messages name the rule: never the URL, which is a secret
    webhook_url: str = field(repr=False)  # a credential: kept out of reprs and logs
    events: tuple[str, ...] | None  # None: every event
    language: str = "en"
    timeout: float = DEFAULT_TIMEOUT


# ---------------------------------------------------------------- configuration

def parse_config(config: Mapping[str, Any]) -> list[Rule]:
    """The rules of a config dict; ``PluginDisabled`` if there is none, ``ConfigError`` if one is wrong."""
    for key in config:
        if key not in TOP_KEYS:
            raise ConfigError(ENV + str(key).upper(), f"unknown setting; known: {', '.join(sorted(TOP_KEYS))}")
    language = _language(config.get("language", "en"), ENV + "LANGUAGE")
    timeout = _timeout(config.get("timeout", DEFAULT_TIMEOUT), ENV + "TIMEOUT")
    rules: list[Rule] = []
    url = config.get("webhook_url")
    if url not in (None, ""):
        events = _events(config.get("events"), ENV + "EVENTS")
        rules.append(Rule("DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL", _url(url, ENV + "WEBHOOK_URL"), events,
                          language, timeout))
    elif config.get("events") not in (None, "", []):
        raise ConfigError(ENV + "WEBHOOK_URL", "is needed with DOLIBARR_WEBHOOKS_SLACK_EVENTS "
                          "(or give each of the rules its own events)")
    raw_rules = config.get("rules")
    if raw_rules not in (None, []):
        if not isinstance(raw_rules, list):
            raise ConfigError(TOML_RULES, "must be a list of tables: rules = [{events = [...], webhook_url = ...}]")
        for index, raw in enumerate(raw_rules):
            where = f"{TOML_RULES}[{index}]"
            if not isinstance(raw, dict):
                raise ConfigError(where, "must be a table with webhook_url and events")
            for key in raw:
                if key not in RULE_KEYS:
                    raise ConfigError(f"{where}.{key}", f"unknown key; known: {', '.join(sorted(RULE_KEYS))}")
            if raw.get("webhook_url") in (None, ""):
                raise ConfigError(f"{where}.webhook_url", "missing")
            rules.append(Rule(
                name=f"rule {index}",
                webhook_url=_url(raw["webhook_url"], f"{where}.webhook_url"),
                events=_events(raw.get("events"), f"{where}.events"),
                language=_language(raw.get("language", language), f"{where}.language"),
                timeout=_timeout(raw.get("timeout", timeout), f"{where}.timeout"),
            ))
    if not rules:
        raise PluginDisabled("no Slack webhook URL configured (DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL)")
    return rules


def _url(value: Any, setting: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(setting, "must be a URL string")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        # Do not echo the value: an incoming webhook URL is a secret.
        raise ConfigError(setting, "must be an https URL, such as https://hooks.slack.com/services/T.../B.../...")
    return value.strip()


def _events(value: Any, setting: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        # An env var that is not JSON stays a string: "BILL_PAYED, PROPAL_CLOSE_SIGNED".
        value = value.replace(",", " ").split()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(setting, "must be a list of trigger codes or patterns, e.g. [\"BILL_PAYED\", \"PROPAL_*\"]")
    if not value:
        raise ConfigError(setting, "is empty: the rule would match nothing (leave it out to match every event)")
    return tuple(v.strip().upper() for v in value)


def _language(value: Any, setting: str) -> str:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in LANGUAGES:
        raise ConfigError(setting, f"must be one of {', '.join(LANGUAGES)}")
    return str(text)


def _timeout(value: Any, setting: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if isinstance(value, bool) or not 0 < seconds <= 300:
        raise ConfigError(setting, "must be a number of seconds between 0 and 300")
    return seconds


# ---------------------------------------------------------------- hooks

@hookimpl
def read_settings(config: dict[str, Any]) -> list[Rule]:
    rules = parse_config(config)
    for rule in rules:
        if rule.webhook_url.lower().startswith("http:"):
            # A warning, not a log line: the core records it, logs it once at start and
            # counts it in 'dolibarr-webhooks check'.
            warnings.warn(f"{rule.name} uses plain http; Slack's webhooks are https", stacklevel=2)
    return rules


@hookimpl
def handled_events(settings: list[Rule]) -> list[str] | None:
    rules = settings
    if any(rule.events is None for rule in rules):
        return None
    return sorted({pattern for rule in rules for pattern in rule.events or ()})


@hookimpl
def handle_event(event: Event, settings: list[Rule]) -> None:
    rules = [rule for rule in settings if matches(event.trigger_code, rule.events)]
    failures: list[Exception] = []
    posted: set[str] = set()
    for rule in rules:
        if rule.webhook_url in posted:
            continue  # two rules naming the same channel: one message (the first rule's)
        posted.add(rule.webhook_url)
        try:
            post(rule, event)
        except Exception as exc:  # noqa: BLE001 - every failure is re-raised below, after the other channels
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise _combined(failures)


def _combined(failures: list[Exception]) -> Exception:
    """One exception for several channels: retried if any of them may still succeed.

    A retry posts again to every matching channel, including those that succeeded
    (at-least-once delivery); the README says so.
    """
    message = "; ".join(str(exc) for exc in failures)
    if all(isinstance(exc, PermanentFailure) for exc in failures):
        return PermanentFailure(message)
    if all(isinstance(exc, (RetryLater, PermanentFailure)) for exc in failures):
        return RetryLater(message, after=max(exc.after for exc in failures if isinstance(exc, RetryLater)))
    return SlackUnavailable(message)


# ---------------------------------------------------------------- sending

def post(rule: Rule, event: Event) -> WebhookResponse:
    """Post one event to one rule's webhook; raise as the contract asks when Slack does not take it."""
    message = build_message(event, rule.language)
    # No retry handlers: retries belong to the core's queue, not to a worker thread asleep.
    client = WebhookClient(rule.webhook_url, timeout=rule.timeout, retry_handlers=[])  # type: ignore[arg-type]
    try:
        response = client.send(text=message["text"], blocks=message["blocks"],
                               unfurl_links=False, unfurl_media=False)
    except OSError as exc:  # URLError, refused, reset, timeout: the core retries with backoff
        raise SlackUnavailable(f"{rule.name}: cannot reach Slack: {exc}") from exc
    check_response(response, rule.name)
    return response


def check_response(response: WebhookResponse, where: str = "webhook") -> None:
    """Map Slack's answer to the core's outcomes: return, RetryLater, PermanentFailure, or retry."""
    status = response.status_code
    if 200 <= status < 300:
        return  # Slack answers 200 "ok"
    body = (response.body or "").strip()[:300]
    detail = f"{where}: Slack answered {status} {body or '(empty body)'}"
    after = retry_after(response.headers)
    if status == 429:
        raise RetryLater(detail, after=DEFAULT_RETRY_AFTER if after is None else after)
    if status >= 500 or status == 408:
        if after is not None:
            raise RetryLater(detail, after=after)
        raise SlackUnavailable(detail)
    # 400 invalid_payload / invalid_blocks, 403 invalid_token, 404 no_service, 410 channel_is_archived...
    raise PermanentFailure(detail)


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), whatever the header's case."""
    value = next((v for k, v in (headers or {}).items() if str(k).lower() == "retry-after"), None)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------- the message

WORDS = {
    "en": {
        "ref": "Ref", "thirdparty": "Third party", "amount_ttc": "Amount incl. tax", "amount": "Amount",
        "status": "Status", "customer_ref": "Customer ref", "due": "Due date", "valid_until": "Valid until",
        "delivery": "Delivery date", "invoices": "Invoices", "method": "Method", "number": "Number",
        "date": "Date", "name": "Name", "customer_code": "Customer code", "supplier_code": "Supplier code",
        "email": "Email", "phone": "Phone", "town": "Town", "job": "Job title", "label": "Label",
        "price": "Price excl. tax", "type": "Type", "title": "Title", "opportunity": "Opportunity",
        "budget": "Budget", "object": "Object", "code": "Trigger code", "open": "Open in Dolibarr",
        "source": "source", "test": "test event", "event": "event",
        "product": "Product", "service": "Service",
    },
    "fr": {
        "ref": "Réf.", "thirdparty": "Tiers", "amount_ttc": "Montant TTC", "amount": "Montant",
        "status": "État", "customer_ref": "Réf. client", "due": "Échéance", "valid_until": "Valable jusqu'au",
        "delivery": "Date de livraison", "invoices": "Factures", "method": "Mode", "number": "Numéro",
        "date": "Date", "name": "Nom", "customer_code": "Code client", "supplier_code": "Code fournisseur",
        "email": "Courriel", "phone": "Téléphone", "town": "Ville", "job": "Poste", "label": "Libellé",
        "price": "Prix HT", "type": "Type", "title": "Libellé", "opportunity": "Opportunité",
        "budget": "Budget", "object": "Objet", "code": "Code déclencheur", "open": "Ouvrir dans Dolibarr",
        "source": "source", "test": "événement de test", "event": "événement",
        "product": "Produit", "service": "Service",
    },
}

# Dolibarr's status numbers, per object type: (English, French).
STATUSES: dict[str, dict[int, tuple[str, str]]] = {
    "facture": {0: ("Draft", "Brouillon"), 1: ("Unpaid", "Impayée"), 2: ("Paid", "Payée"),
                3: ("Abandoned", "Abandonnée")},
    "propal": {0: ("Draft", "Brouillon"), 1: ("Open", "Ouverte"), 2: ("Signed", "Signée"),
               3: ("Not signed", "Non signée"), 4: ("Billed", "Facturée")},
    "commande": {-1: ("Cancelled", "Annulée"), 0: ("Draft", "Brouillon"), 1: ("Validated", "Validée"),
                 2: ("In progress", "En cours"), 3: ("Delivered", "Délivrée")},
    "project": {0: ("Draft", "Brouillon"), 1: ("Open", "Ouvert"), 2: ("Closed", "Clôturé")},
}

EMOJI = {"societe": ":office:", "contact": ":bust_in_silhouette:", "facture": ":receipt:",
         "payment": ":moneybag:", "propal": ":memo:", "commande": ":package:", "product": ":label:",
         "project": ":file_folder:"}
DOCUMENTS = ("facture", "propal", "commande")


def build_message(event: Event, language: str = "en") -> dict[str, Any]:
    """``{"text": fallback, "blocks": [...]}`` for one event, in ``language`` (en or fr)."""
    words = WORDS[language]
    element = event.element or ""
    fields = [f"*{words[key]}*\n{value}" for key, value in _fields(event, language) if value]
    # The header says what happened and the fields give the details; the summary line is
    # kept for objects without fields, and as the notification text.
    section: dict[str, Any] = {"type": "section"}
    if fields:
        section["fields"] = [_mrkdwn(_cut(f, 2000)) for f in fields[:10]]
    else:
        section["text"] = _mrkdwn(_cut(escape(summary(event, language)), 3000))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "emoji": True,
                                    "text": _cut(f"{EMOJI.get(element, ':bell:')} {_title(event, language)}", 150)}},
        section,
    ]
    card = event.card_url
    if card and len(card) <= 3000:
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "action_id": "dolibarr_card", "url": card,
            "text": {"type": "plain_text", "text": words["open"]},
        }]})
    context = [f"Dolibarr `{escape(event.trigger_code)}`", f"{words['source']} {escape(event.source)}",
               f"{words['event']} {escape(event.id)}"]
    if event.test:
        context.append(f"*{words['test']}*")
    blocks.append({"type": "context", "elements": [_mrkdwn(_cut(" · ".join(context), 3000))]})
    return {"text": escape(summary(event, language)), "blocks": blocks}


def _title(event: Event, language: str) -> str:
    """``Proposal PR2611-0088 signed``: what happened, to what."""
    name = object_name(event, language)
    words = noun_and_verb(event.trigger_code, language)
    if words is None:
        return f"{event.trigger_code} {name}" if name else event.trigger_code
    noun, verb = words
    return f"{noun} {name} {verb}" if name else f"{noun} {verb}"


def _fields(event: Event, language: str) -> list[tuple[str, str | None]]:
    """(label key, mrkdwn value) pairs for the section's fields, by object type."""
    obj = event.object
    element = event.element or ""
    ref = _link(event.card_url, event.ref) if event.ref else None
    third = _thirdparty(event, language)
    if element in DOCUMENTS:
        date_key, date_name = {"facture": ("date_lim_reglement", "due"), "propal": ("fin_validite", "valid_until"),
                               "commande": ("delivery_date", "delivery")}[element]
        return [("ref", ref), ("thirdparty", third), ("amount_ttc", _amount(obj, "total_ttc", language)),
                ("status", _status(event, language)), ("customer_ref", _text(obj.get("ref_client"))),
                (date_name, _date(obj.get(date_key)))]
    if element == "payment":
        invoices = obj.get("amounts") if isinstance(obj.get("amounts"), dict) else {}
        links = ", ".join(_link(_card(event, "facture", k), f"#{k}") for k in invoices)
        return [("ref", ref), ("amount", _amount(obj, "amount", language)), ("thirdparty", third),
                ("invoices", links), ("method", _text(obj.get("paiementcode"))),
                ("number", _text(obj.get("num_payment"))), ("date", _date(obj.get("datepaye")))]
    if element == "societe":
        town = " ".join(str(v) for v in (obj.get("zip"), obj.get("town"), obj.get("country_code")) if v)
        return [("name", _link(event.card_url, obj.get("name") or obj.get("nom") or event.ref)),
                ("customer_code", _text(obj.get("code_client"))),
                ("supplier_code", _text(obj.get("code_fournisseur"))),
                ("email", _text(obj.get("email"))), ("phone", _text(obj.get("phone"))), ("town", _text(town))]
    if element == "contact":
        return [("name", _link(event.card_url, person_name(obj))), ("thirdparty", third),
                ("job", _text(obj.get("poste"))), ("email", _text(obj.get("email"))),
                ("phone", _text(obj.get("phone_pro") or obj.get("phone_mobile")))]
    if element == "product":
        kind = {"0": "product", "1": "service"}.get(str(obj.get("type")))
        return [("ref", ref), ("label", _text(obj.get("label"))),
                ("price", format_amount(obj.get("price"), None, language)),
                ("type", WORDS[language][kind] if kind else None)]
    if element == "project":
        opportunity = format_amount(obj.get("opp_amount"), None, language)
        if opportunity and to_decimal(obj.get("opp_percent")) is not None:
            opportunity += f" ({to_decimal(obj.get('opp_percent')):g} %)"
        return [("ref", ref), ("title", _text(obj.get("title"))), ("thirdparty", third),
                ("status", _status(event, language)), ("opportunity", opportunity),
                ("budget", format_amount(obj.get("budget_amount"), None, language))]
    ident = f"{element} #{event.object_id}" if element and event.object_id else element or None
    return [("ref", ref), ("object", _text(ident)), ("code", f"`{escape(event.trigger_code)}`")]


def _amount(obj: dict[str, Any], key: str, language: str) -> str | None:
    # The amount in the document's own currency when Dolibarr gives it; total_ttc is in the
    # company's main currency, which need not be multicurrency_code.
    value = obj.get(f"multicurrency_{key}")
    if to_decimal(value) is None:
        value = obj.get(key)
    text = format_amount(value, currency(obj), language)
    return escape(text) if text else None


def _status(event: Event, language: str) -> str | None:
    raw = event.object.get("status", event.object.get("statut"))
    number = to_decimal(raw)
    if number is None:
        return None
    if number == 0 and event.trigger_code.endswith("_VALIDATE"):
        number = to_decimal(1)  # the object is sent before its status is updated
    label = STATUSES.get(event.element or "", {}).get(int(number))  # type: ignore[arg-type]
    return label[language == "fr"] if label else None


def _thirdparty(event: Event, language: str) -> str | None:
    label = thirdparty_label(event.object, language)
    if not label:
        return None
    nested = event.object.get("thirdparty")
    socid = (nested.get("id") if isinstance(nested, dict) else None) or event.object.get("socid") \
        or event.object.get("fk_soc")
    return _link(_card(event, "societe", socid), label)


def _card(event: Event, element: str, object_id: Any) -> str | None:
    if not event.dolibarr_url or object_id in (None, "", 0, "0"):
        return None
    return event.dolibarr_url.rstrip("/") + "/" + CARD_PATHS[element].format(id=object_id)


def _date(value: Any) -> str | None:
    """Slack shows ``<!date^...>`` in each reader's time zone; the fallback is the UTC date."""
    seconds = to_decimal(value)
    if seconds is None or seconds <= 0:
        return None
    stamp = int(seconds)
    fallback = datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y-%m-%d")
    return f"<!date^{stamp}^{{date_short}}|{fallback}>"


def _link(url: str | None, text: Any) -> str | None:
    if text in (None, ""):
        return None
    if not url:
        return escape(str(text))
    return f"<{escape(url).replace('|', '%7C')}|{escape(str(text))}>"


def _text(value: Any) -> str | None:
    if value in (None, "") or isinstance(value, (dict, list)):
        return None
    return escape(str(value))


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    # Do not leave half of an escaped "&amp;" at the cut.
    return re.sub(r"&[a-z]{0,3}$", "", text[: limit - 1]) + "…"


def escape(text: str) -> str:
    """Slack's three control characters in mrkdwn (https://api.slack.com/reference/surfaces/formatting)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
