"""Read the plugin's settings dict (env vars ``DOLIBARR_WEBHOOKS_EMAIL_*`` merged with
``[plugins.email]`` of the TOML file) into frozen dataclasses, templates compiled, or say which
setting is wrong. Done once, at start-up: deliveries only use the result."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from jinja2 import TemplateNotFound, TemplateSyntaxError

from dolibarr_webhooks import ConfigError, PluginDisabled

from .templating import Templates

ENV_PREFIX = "DOLIBARR_WEBHOOKS_EMAIL_"
SECURITIES = ("none", "starttls", "tls")
LANGUAGES = ("en", "fr")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
DEFAULT_TIMEOUT = 20.0

# Keys of one rule, at the top level (the env-var rule) and in each [[plugins.email.rules]] table.
RULE_KEYS = frozenset({"events", "to", "to_field", "from", "reply_to", "language", "subject", "template"})
SERVER_KEYS = frozenset({"host", "port", "security", "username", "password", "timeout", "ca_file",
                         "templates_dir", "rules", "alert_to"})

_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Rule:
    """Which events go to whom, in which language, with which templates."""

    name: str  # how messages and errors name the rule: the env var rule or ``rules[0]``
    index: int
    events: tuple[str, ...] | None  # None: every event
    to: tuple[str, ...]  # fixed addresses
    to_field: str | None  # field of the event's object holding more addresses (``email``, ``thirdparty.email``)
    sender: str
    reply_to: str | None
    language: str
    subject: str | None  # a Jinja2 template string replacing the subject templates
    template: str | None  # a template name searched before the code's and the family's


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    security: str
    username: str | None
    password: str | None
    timeout: float
    ca_file: str | None
    templates_dir: str | None
    rules: tuple[Rule, ...]
    sender: str | None = None  # the default From (the alerts' sender)
    language: str = "en"  # the default language (the alerts' language)
    alert_to: tuple[str, ...] = ()  # who gets the alerts about failing deliveries
    templates: Templates = field(default_factory=Templates, compare=False, repr=False)


def env(key: str) -> str:
    return ENV_PREFIX + key.upper()


def rule_key(rule: str, key: str) -> str:
    """The name a ConfigError gives a rule's setting: the env var, or the TOML key."""
    return env(key) if rule == "env" else f"[plugins.email] {rule}.{key}"


def _text(value: Any, setting: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list, bool)):
        raise ConfigError(setting, "must be a string")
    # Env values are JSON-decoded first: a numeric password arrives as an int.
    return str(value).strip() or None


def _existing(value: Any, setting: str, kind: str) -> str | None:
    """A path setting naming a ``file`` or ``directory`` that must exist."""
    path = _text(value, setting)
    if not path:
        return None
    try:
        found = Path(path).is_file() if kind == "file" else Path(path).is_dir()
    except OSError as exc:  # a name longer than the system allows, a loop of links
        raise ConfigError(setting, f"cannot use {path}: {exc.strerror}") from None
    if not found:
        raise ConfigError(setting, f"no such {kind}: {path}")
    return path


def parse_addresses(value: Any, setting: str | None = None) -> tuple[str, ...]:
    """``"a@x, Name <b@y>"`` or a list of them -> the addresses as written (names kept).

    With ``setting``, an entry that is not an address is a ConfigError; without it
    (addresses read from a Dolibarr object), it is dropped.
    """
    if value is None or value == "":
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            if setting:
                raise ConfigError(setting, f"expected email addresses, got {item!r}")
            continue
        # Dolibarr lets users separate several addresses in one field with ';' as well as ','.
        for name, addr in getaddresses([item.replace(";", ",")]):
            if not addr:
                continue
            formatted = _format_address(name, addr)
            if formatted is None:
                if setting:
                    raise ConfigError(setting, f"{addr!r} is not an email address")
                continue
            out.append(formatted)
    return tuple(out)


def _format_address(name: str, addr: str) -> str | None:
    """``"Doe, John" <j@x.org>``: quoted as a header needs it, or None if not an address."""
    local, _, domain = addr.rpartition("@")
    if not local or not domain or any(c.isspace() for c in addr):
        return None
    try:
        return str(Address(display_name=name, addr_spec=addr))
    except (ValueError, HeaderParseError):
        return None


def _one_address(value: Any, setting: str) -> str | None:
    addresses = parse_addresses(_text(value, setting), setting)
    if len(addresses) > 1:
        raise ConfigError(setting, "must be one email address")
    return addresses[0] if addresses else None


def _events(value: Any, setting: str) -> tuple[str, ...] | None:
    if value is None or value == "" or value == []:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ConfigError(setting, "must be a list of trigger codes or patterns (BILL_PAYED, BILL_*)")
    events = tuple(i.strip().upper() for i in items if i.strip())
    return events or None


def _language(value: Any, setting: str, default: str) -> str:
    text = _text(value, setting)
    if text is None:
        return default
    if text.lower() not in LANGUAGES:
        raise ConfigError(setting, f"must be one of {', '.join(LANGUAGES)}, not {text!r}")
    return text.lower()


def _rule(data: dict[str, Any], name: str, index: int, defaults: dict[str, Any]) -> Rule:
    unknown = sorted(set(data) - RULE_KEYS)
    if unknown:
        raise ConfigError(rule_key(name, unknown[0]), f"unknown key; known keys: {', '.join(sorted(RULE_KEYS))}")

    def key(k: str) -> str:
        return rule_key(name, k)

    to = parse_addresses(data.get("to"), key("to"))
    to_field = _text(data.get("to_field"), key("to_field"))
    if not to and not to_field:
        raise ConfigError(key("to"), "no recipients: give fixed addresses (to) and/or an object field (to_field)")
    sender = _one_address(data.get("from"), key("from")) or defaults["from"]
    if sender is None:
        raise ConfigError(env("from"), "required: the sender address (From)")
    template = _text(data.get("template"), key("template"))
    if template is not None and not _TEMPLATE_NAME.match(template):
        raise ConfigError(key("template"), "must be a template base name such as 'welcome'")
    subject = data.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise ConfigError(key("subject"), "must be a string (a Jinja2 template)")
    return Rule(
        name=name,
        index=index,
        events=_events(data.get("events"), key("events")),
        to=to,
        to_field=to_field,
        sender=sender,
        reply_to=_one_address(data.get("reply_to"), key("reply_to")) or defaults["reply_to"],
        language=_language(data.get("language"), key("language"), defaults["language"]),
        subject=subject or None,
        template=template,
    )


def _port(value: Any, security: str) -> int:
    if value is None or value == "":
        return DEFAULT_PORTS[security]
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise ConfigError(env("port"), f"must be an integer, not {value!r}")
    port = int(value)
    if not 0 < port < 65536:
        raise ConfigError(env("port"), f"must be between 1 and 65535, not {port}")
    return port


def _timeout(value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    try:
        if isinstance(value, bool):
            raise ValueError
        timeout = float(value)
    except (TypeError, ValueError):
        raise ConfigError(env("timeout"), f"must be a number of seconds, not {value!r}") from None
    if not timeout > 0:
        raise ConfigError(env("timeout"), "must be a positive number of seconds")
    return timeout


def parse_settings(config: dict[str, Any]) -> Settings:
    """The plugin's settings, or ``PluginDisabled`` (no host) / ``ConfigError`` (a bad setting)."""
    config = {str(k).lower(): v for k, v in (config or {}).items()}
    host = _text(config.get("host"), env("host"))
    if host is None:
        ignored = " (other email settings are ignored)" if config else ""
        raise PluginDisabled(f"no SMTP server: {env('host')} is not set{ignored}")
    unknown = sorted(set(config) - SERVER_KEYS - RULE_KEYS)
    if unknown:
        raise ConfigError(env(unknown[0]), "unknown email setting")

    security = (_text(config.get("security"), env("security")) or "").lower()
    if not security:
        # Port 465 is implicit TLS by convention; anything else upgrades with STARTTLS.
        security = "tls" if str(config.get("port")) == "465" else "starttls"
    if security not in SECURITIES:
        raise ConfigError(env("security"), f"must be one of {', '.join(SECURITIES)}, not {security!r}")

    username = _text(config.get("username"), env("username"))
    raw_password = config.get("password")
    _text(raw_password, env("password"))  # type check only: spaces in a password are meaningful
    password = None if raw_password in (None, "") else str(raw_password)
    if password and not username:
        raise ConfigError(env("username"), "required when a password is set")

    ca_file = _existing(config.get("ca_file"), env("ca_file"), "file")
    templates_dir = _existing(config.get("templates_dir"), env("templates_dir"), "directory")

    sender = _one_address(config.get("from"), env("from"))
    if sender is None and username and "@" in username:
        sender = username  # most providers only accept their account's own address as sender
    defaults = {
        "from": sender,
        "reply_to": _one_address(config.get("reply_to"), env("reply_to")),
        "language": _language(config.get("language"), env("language"), "en"),
    }

    rules: list[Rule] = []
    top = {k: config[k] for k in RULE_KEYS if k in config}
    if config.get("to") or config.get("to_field"):
        rules.append(_rule(top, "env", 0, defaults))
    elif config.get("events"):
        raise ConfigError(env("to"), f"{env('events')} is set but there is no recipient: "
                                     f"set {env('to')} and/or {env('to_field')}")
    raw_rules = config.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError("[plugins.email] rules", "must be a list of tables: rules = [{events = [...], to = [...]}]")
    for i, data in enumerate(raw_rules):
        if not isinstance(data, dict):
            raise ConfigError(f"[plugins.email] rules[{i}]", "must be a table {events = [...], to = [...]}")
        rules.append(_rule(data, f"rules[{i}]", len(rules), defaults))
    alert_to = parse_addresses(config.get("alert_to"), env("alert_to"))
    if alert_to and sender is None:
        raise ConfigError(env("from"), f"required with {env('alert_to')}: the alerts' sender address (From)")
    if not rules and not alert_to:
        # Alerts alone are a configuration: such a plugin handles no events.
        raise ConfigError(env("to"), f"no recipients: set {env('to')} and/or {env('to_field')}, "
                                     f"or [plugins.email] rules, or {env('alert_to')} for alerts only")

    templates = Templates(templates_dir)
    check_templates(templates, rules)
    if alert_to:
        templates.first([f"{defaults['language']}/_alert.body.txt"])  # compiled now, not at the first alert
    return Settings(
        host=host,
        port=_port(config.get("port"), security),
        security=security,
        username=username,
        password=password,
        timeout=_timeout(config.get("timeout")),
        ca_file=ca_file,
        templates_dir=templates_dir,
        rules=tuple(rules),
        sender=sender,
        language=defaults["language"],
        alert_to=alert_to,
        templates=templates,
    )


def check_templates(templates: Templates, rules: list[Rule]) -> None:
    """Compile the user's templates and each rule's subject, and find each rule's template, so
    that typos stop start-up; the compiled templates are kept for the deliveries."""
    templates.check_folder(env("templates_dir"))
    for rule in rules:
        if rule.subject:
            try:
                templates.string(rule.subject)
            except TemplateSyntaxError as exc:
                raise ConfigError(rule_key(rule.name, "subject"), f"bad template: {exc.message}") from exc
        if rule.template:
            name = f"{rule.language}/{rule.template}.body.txt"
            try:
                templates.first([name])
            except TemplateNotFound:
                raise ConfigError(rule_key(rule.name, "template"),
                                  f"no template {name} in the templates folder or the packaged ones") from None
