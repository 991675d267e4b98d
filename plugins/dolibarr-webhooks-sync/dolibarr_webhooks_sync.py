"""Forward Dolibarr events to other software, signed the Standard Webhooks way.

Each matching endpoint receives one ``POST`` of JSON
``{"type": <trigger code>, "timestamp": <received at>, "data": {<event fields>, "object": {...}}}``
with the headers ``webhook-id`` (stable across retries), ``webhook-timestamp`` and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``), so any
Standard Webhooks library can verify it. Optionally the object is first re-read from
Dolibarr's REST API, once Dolibarr's transaction has committed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import requests

from dolibarr_webhooks import ConfigError, Event, PermanentFailure, PluginDisabled, RetryLater, hookimpl
from dolibarr_webhooks.pluginkit import (
    SIGNATURE_HEADERS,
    combine_failures,
    handled_by,
    json_text,
    matches,
    parse_bool,
    redact_text,
    retry_after,
    scrub,
    signature_headers,
    signing_key,
)

__version__ = "0.1.0"

log = logging.getLogger(__name__)

ENV_PREFIX = "DOLIBARR_WEBHOOKS_SYNC_"
TOML_ENDPOINTS = "plugins.sync.endpoints"
USER_AGENT = f"dolibarr-webhooks-sync/{__version__}"
DEFAULT_TIMEOUT = 10.0
DEFAULT_ENRICH_DELAY = 2.0
DEFAULT_ENRICH_ATTEMPTS = 3

HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

# Dolibarr's ``element`` -> its REST API resource (GET {api}/{resource}/{id}).
API_RESOURCES = {
    "facture": "invoices",
    "societe": "thirdparties",
    "propal": "proposals",
    "commande": "orders",
    "product": "products",
    "project": "projects",
    "contact": "contacts",
}


class DeliveryError(Exception):
    """A failure worth retrying on the core's schedule: network error, timeout, 408, 429, 5xx."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    key: bytes = field(repr=False)  # HMAC key bytes, checked and derived from the secret by ``secret_key``
    events: tuple[str, ...] | None  # None: every event
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    enrich: bool = False
    # How messages and logs name the endpoint, made once.
    where: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "where", f"endpoint {self.name} ({shown_url(self.url)})")


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[Endpoint, ...]
    api_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    enrich_delay: float = DEFAULT_ENRICH_DELAY
    enrich_attempts: int = DEFAULT_ENRICH_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT


# --- settings -------------------------------------------------------------------------------

def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def secret_key(secret: Any, setting: str) -> bytes:
    """The HMAC key bytes for a secret (``pluginkit.signing_key``), once the secret is checked.

    ``whsec_<base64>``: the base64-decoded bytes (``Webhook("whsec_...")`` on the receiver).
    Any other string: its UTF-8 bytes (``Webhook(secret.encode())`` on the receiver: given a
    ``str``, the library would base64-decode it). Surrounding whitespace is ignored.
    """
    if secret is None or secret == "":
        raise ConfigError(setting, "is required: every endpoint needs a signing secret")
    if isinstance(secret, int) and not isinstance(secret, bool):
        secret = str(secret)  # an all-digit env value arrives JSON-decoded as an int
    if not isinstance(secret, str):
        raise ConfigError(setting, "must be a string: whsec_<base64> or a raw secret")
    secret = secret.strip()
    if not secret:
        raise ConfigError(setting, "is blank: every endpoint needs a signing secret")
    if not secret.startswith("whsec_"):
        return signing_key(secret)
    encoded = secret[len("whsec_"):]
    # The libraries decode leniently (unknown characters dropped): insist on real base64 so a
    # typo is caught here, not as signatures that never verify.
    if not BASE64.match(encoded):
        raise ConfigError(setting, "after whsec_ must come standard base64 (A-Z a-z 0-9 + /)")
    try:
        base64.b64decode(encoded + "==")  # as the libraries do: padding optional
    except binascii.Error as exc:
        raise ConfigError(setting, f"after whsec_ is not valid base64: {exc}") from None
    return signing_key(secret)


def _url(value: Any, setting: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(setting, "must be an http(s) URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, f"must be an http(s) URL, not {shown_url(value.strip())!r}")
    return value.strip()


def _number(value: Any, setting: str, default: float, minimum: float, strict: bool) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not (number > minimum or (not strict and number == minimum)):
        bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
        raise ConfigError(setting, f"must be a number {bound} (seconds), not {value!r}")
    return number


def _flag(value: Any, setting: str) -> bool:
    try:
        return parse_bool(value)  # the core's words for true and false
    except ValueError:
        raise ConfigError(setting, f"must be true or false, not {value!r}") from None


def _events(value: Any, setting: str) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = re.split(r"[,\s]+", value.strip())  # "BILL_PAYED,BILL_VALIDATE" from .env
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(setting, "must be a list of trigger codes or patterns such as BILL_*")
    codes = tuple(v.strip() for v in value if v.strip())
    if not codes:
        raise ConfigError(setting, "is empty: leave it out to forward every event")
    return codes


def _headers(value: Any, setting: str) -> tuple[tuple[str, str], ...]:
    if value is None or value == "":
        return ()
    if not isinstance(value, dict):
        raise ConfigError(setting, 'must be a JSON object / TOML table, e.g. {"X-Api-Key": "..."}')
    headers = []
    for name, header_value in value.items():
        if not isinstance(name, str) or not HEADER_NAME.match(name):
            raise ConfigError(setting, f"{name!r} is not a valid header name")
        if name.lower() in SIGNATURE_HEADERS:
            raise ConfigError(setting, f"{name} is set by the signature and cannot be overridden")
        if not isinstance(header_value, str) or "\r" in header_value or "\n" in header_value:
            raise ConfigError(setting, f"the value of {name} must be a one-line string")
        headers.append((name, header_value))
    return tuple(headers)


def _endpoint(table: dict[str, Any], name: str, setting: Callable[[str], str], timeout: float,
              enrich_default: bool) -> Endpoint:
    return Endpoint(
        name=name,
        url=_url(table.get("url"), setting("url")),
        key=secret_key(table.get("secret"), setting("secret")),
        events=_events(table.get("events"), setting("events")),
        headers=_headers(table.get("headers"), setting("headers")),
        timeout=_number(table.get("timeout"), setting("timeout"), timeout, 0, strict=True),
        enrich=_flag(table["enrich"], setting("enrich")) if table.get("enrich") not in (None, "")
        else enrich_default,
    )


def parse_settings(config: dict[str, Any]) -> Settings:
    """Validate the plugin's config dict; ``PluginDisabled`` when no endpoint is configured."""
    config = config or {}
    tables = config.get("endpoints")
    endpoint_keys = ("url", "secret", "events", "headers")
    if not config.get("url") and not tables:
        if any(config.get(k) not in (None, "") for k in endpoint_keys[1:]):
            raise ConfigError(env_name("url"), "is required (or [plugins.sync] endpoints)")
        raise PluginDisabled(f"no endpoint configured: set {env_name('url')} or [plugins.sync] endpoints")

    timeout = _number(config.get("timeout"), env_name("timeout"), DEFAULT_TIMEOUT, 0, strict=True)
    api_url = config.get("dolibarr_api_url")
    api_url = _url(api_url, env_name("dolibarr_api_url")).rstrip("/") if api_url not in (None, "") else None
    api_key = config.get("dolibarr_api_key")
    if isinstance(api_key, int) and not isinstance(api_key, bool):
        api_key = str(api_key)  # an all-digit env value arrives JSON-decoded as an int
    if api_url and (not isinstance(api_key, str) or not api_key.strip()):
        raise ConfigError(env_name("dolibarr_api_key"), f"is required with {env_name('dolibarr_api_url')}")

    endpoints: list[Endpoint] = []
    if config.get("url"):
        endpoints.append(_endpoint(config, "default", env_name, timeout, bool(api_url)))
    if tables:
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(TOML_ENDPOINTS, "must be a list of tables: endpoints = [{name = ..., url = ...}]")
        for index, table in enumerate(tables):
            prefix = f"{TOML_ENDPOINTS}[{index}]"
            name = table.get("name")
            if not isinstance(name, str) or not ENDPOINT_NAME.match(name):
                raise ConfigError(f"{prefix}.name", "is required: letters, digits, '.', '_' or '-'")
            endpoints.append(_endpoint(table, name, lambda key, p=prefix: f"{p}.{key}", timeout, bool(api_url)))
    names = [e.name for e in endpoints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(TOML_ENDPOINTS, f"endpoint name {duplicates[0]!r} is used twice")
    if not api_url and any(e.enrich for e in endpoints):
        raise ConfigError(env_name("dolibarr_api_url"), "is required for enrich = true")

    attempts = config.get("enrich_attempts")
    if attempts in (None, ""):
        attempts = DEFAULT_ENRICH_ATTEMPTS
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigError(env_name("enrich_attempts"), f"must be a whole number, at least 1, not {attempts!r}")
    return Settings(
        endpoints=tuple(endpoints),
        api_url=api_url,
        api_key=api_key.strip() if api_url else None,
        enrich_delay=_number(config.get("enrich_delay"), env_name("enrich_delay"), DEFAULT_ENRICH_DELAY, 0,
                             strict=False),
        enrich_attempts=attempts,
        timeout=timeout,
    )


# --- the message ----------------------------------------------------------------------------

def message_id(event: Event, endpoint: Endpoint) -> str:
    """Stable across retries (receivers dedupe on it), distinct per endpoint."""
    digest = hashlib.sha256(f"{endpoint.name}\n{event.id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def message_body(event: Event, obj: dict[str, Any], enriched: bool) -> bytes:
    data = event.to_dict()
    data.update(object=obj, card_url=event.card_url, enriched=enriched, state=event.state)
    message = {"type": event.trigger_code, "timestamp": event.received_at.isoformat(), "data": data}
    return json_text(message).encode()


# --- HTTP -----------------------------------------------------------------------------------

def shown_url(url: str) -> str:
    """A URL for messages and logs: the core's redaction, and the whole query masked, as it may
    hold a token under a name the core's rule does not know (``?code=`` of Azure Functions)."""
    base, _, query = url.partition("?")
    return redact_text(base) + ("?***" if query else "")


def _network_error(where: str, url: str, exc: requests.RequestException) -> DeliveryError:
    # requests quotes the URL's path and query in its messages.
    return DeliveryError(f"{where}: {type(exc).__name__}: {redact_text(str(exc), [urlsplit(url).query])}")


def check_response(response: requests.Response, where: str) -> None:
    """Return on 2xx; otherwise raise what the worker should do about it."""
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = f"{where} answered {status} {response.reason or ''}".rstrip()
    snippet = " ".join(response.text[:400].split())[:200]
    if snippet:
        detail += f": {snippet}"
    if status in (429, 503):
        after = retry_after(response.headers)
        if after is not None:
            raise RetryLater(detail, after=after)
    if status in (408, 429) or status >= 500:
        raise DeliveryError(detail)
    if 300 <= status < 400:
        # Redirects are not followed: requests would re-send a POST as a GET without the body.
        raise PermanentFailure(f"{detail} (redirect to {response.headers.get('Location')}: "
                               "configure the final URL)")
    raise PermanentFailure(detail)


def post(endpoint: Endpoint, msg_id: str, body: bytes) -> None:
    headers = dict(endpoint.headers)
    headers.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
    # Signed at each attempt: the timestamp is the sending time, which receivers check for freshness.
    headers.update(signature_headers(endpoint.key, msg_id, body))
    where = endpoint.where
    try:
        response = requests.post(endpoint.url, data=body, headers=headers, timeout=endpoint.timeout,
                                 allow_redirects=False)
    except requests.RequestException as exc:
        raise _network_error(where, endpoint.url, exc) from exc
    check_response(response, where)


# --- enrichment -----------------------------------------------------------------------------

def api_path(event: Event) -> str | None:
    """``{resource}/{id}`` in Dolibarr's REST API for the event's object, or None when not readable."""
    resource = API_RESOURCES.get(event.element or "")
    if not resource or not event.object_id or event.trigger_code.endswith("_DELETE"):
        return None  # a deleted object is gone: forward what Dolibarr sent
    return f"{resource}/{quote(event.object_id, safe='')}"


def committed_object(event: Event, settings: Settings, path: str) -> dict[str, Any] | None:
    """The object as Dolibarr committed it, or None when it does not exist (rolled back or deleted).

    Dolibarr posts from inside its database transaction, before the commit: wait until
    ``enrich_delay`` after reception, then read, and read again on 404 (not committed yet).
    """
    assert settings.api_url and settings.api_key
    url = f"{settings.api_url}/{path}"
    where = f"Dolibarr API ({shown_url(url)})"
    age = (datetime.now(timezone.utc) - event.received_at).total_seconds()
    if settings.enrich_delay > age:
        time.sleep(settings.enrich_delay - age)  # an old event (a retry) waits no more
    for attempt in range(1, settings.enrich_attempts + 1):
        try:
            response = requests.get(url, headers={"DOLAPIKEY": settings.api_key, "Accept": "application/json",
                                                  "User-Agent": USER_AGENT},
                                    timeout=settings.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise _network_error(where, url, exc) from exc
        if response.status_code == 404:
            if attempt < settings.enrich_attempts:
                time.sleep(settings.enrich_delay)
                continue
            return None
        check_response(response, where)
        try:
            obj = response.json()
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise PermanentFailure(f"{where} answered {response.status_code} without a JSON object: "
                                   f"check {env_name('dolibarr_api_url')} (…/api/index.php)")
        return scrub(obj)
    return None  # not reached: the loop returns or raises


# --- hooks ----------------------------------------------------------------------------------

@hookimpl
def read_settings(config: dict[str, Any]) -> Settings:
    return parse_settings(config)


@hookimpl
def handled_events(settings: Settings) -> list[str] | None:
    return handled_by(settings.endpoints)


@hookimpl
def handle_event(event: Event, settings: Settings) -> None:
    targets = [e for e in settings.endpoints if matches(event.trigger_code, e.events)]
    path = api_path(event)
    read: list[tuple[dict[str, Any] | None, Exception | None]] = []  # one API read per call

    def enriched_object() -> dict[str, Any]:
        if not read:
            try:
                read.append((committed_object(event, settings, path or ""), None))
            except Exception as exc:  # re-raised below for each endpoint that needs it
                read.append((None, exc))
            if read[0] == (None, None):
                log.warning("%s %s %s: not found in Dolibarr after %d reads; rolled back or deleted, "
                            "not forwarded to enriched endpoints", event.trigger_code, event.element,
                            event.object_id, settings.enrich_attempts)
        obj, error = read[0]
        if error is not None:
            raise error
        if obj is None:
            raise PermanentFailure(
                f"{event.element} {event.object_id} ({event.trigger_code}) not found in Dolibarr's API after "
                f"{settings.enrich_attempts} reads: its transaction was rolled back or it was deleted; "
                "not forwarded")
        return obj

    # With several endpoints, a retry re-sends to all of them: the stable webhook-id lets
    # receivers drop what they already have.
    failures: list[Exception] = []
    for endpoint in targets:
        try:
            enrich = endpoint.enrich and path is not None
            obj = enriched_object() if enrich else event.object
            post(endpoint, message_id(event, endpoint), message_body(event, obj, enrich))
        except Exception as exc:  # collected, then raised: one endpoint's failure must not stop the others
            failures.append(exc)
            continue
        log.info("forwarded %s %s to %s", event.trigger_code, event.id, endpoint.name)
    if failures:
        raise combine_failures(failures, DeliveryError)
