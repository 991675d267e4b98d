"""The write-back plugin's settings, read once at start-up into one checked object.

Variables ``DOLIBARR_WEBHOOKS_DOLIBARR_<KEY>`` (``config["<key>"]``), then the TOML table
``[plugins.dolibarr]``. The Dolibarr URL of a source is the core's (``DOLIBARR_WEBHOOKS_DOLIBARR_URL``
or ``dolibarr_url`` of ``[sources.NAME]``), which reaches the plugin on each event as
``event.dolibarr_url``; ``api_url`` overrides it where the API lives elsewhere.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from dolibarr_webhooks import ConfigError, PluginDisabled
from dolibarr_webhooks.pluginkit import DEAD, DELIVERED, canonical_code

ENV_PREFIX = "DOLIBARR_WEBHOOKS_DOLIBARR_"
TOML_SOURCES = "[plugins.dolibarr.sources.{name}]"
DEFAULT_TIMEOUT = 10.0
DEFAULT_SETTLE_DELAY = 2.0

# The trigger codes (or their prefixes) each action can follow: it acts on their object.
ACTIONS = {
    "create_order": ("PROPAL_CLOSE_SIGNED",),  # POST /orders/createfromproposal/{id}, of a signed proposal
    "build_pdf": ("PROPAL_", "ORDER_", "BILL_"),  # PUT /documents/builddoc
}
OUTCOMES = (DELIVERED, DEAD)
# The core's own plugins: "log" delivers every event (a log line), not news for the card.
BUILTIN_PLUGINS = ("log", "catalogue")
# Every key the plugin reads (``DOLIBARR_WEBHOOKS_DOLIBARR_<KEY>``); others are typos, refused.
KEYS = ("api_key", "api_url", "plugins", "outcomes", "actions", "settle_delay", "timeout", "sources")
PLUGIN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Source:
    """Where and how to reach one Dolibarr: ``api_url`` None means ``<event.dolibarr_url>/api/index.php``."""

    name: str
    api_key: str = field(repr=False)
    api_url: str | None = None
    where: str = ENV_PREFIX + "API_KEY"  # the setting to name in messages

    def url_for(self, dolibarr_url: str | None) -> str | None:
        if self.api_url:
            return self.api_url
        if dolibarr_url:
            return dolibarr_url.rstrip("/") + "/api/index.php"
        return None


@dataclass(frozen=True)
class Settings:
    sources: Mapping[str, Source]  # by source name; "*" for every source without its own table
    plugins: tuple[str, ...] | None  # whose outcomes are written back; None: every other plugin but the core's
    outcomes: tuple[str, ...]
    actions: Mapping[str, tuple[str, ...]]  # trigger code -> action names
    timeout: float = DEFAULT_TIMEOUT
    settle_delay: float = DEFAULT_SETTLE_DELAY
    # The API user's id per (API URL, key): read once with GET /users/info, kept for the process.
    api_users: dict[tuple[str, str], int] = field(default_factory=dict, repr=False, compare=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def source(self, name: str) -> Source | None:
        return self.sources.get(name) or self.sources.get("*")

    def writes_back(self, plugin: str, kind: str) -> bool:
        kind = DELIVERED if kind != DEAD else DEAD  # "recovered" is a delivery too
        if self.plugins is None:
            return kind in self.outcomes and plugin not in BUILTIN_PLUGINS
        return kind in self.outcomes and plugin in self.plugins


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def _text(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # an all-digit variable arrives JSON-decoded as an int
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _url(value: Any, setting: str) -> str | None:
    if value in (None, ""):
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(setting, "must be the http(s) URL of Dolibarr's REST API, "
                                   "e.g. https://erp.example/api/index.php")
    if parts.username or parts.password or parts.query:
        raise ConfigError(setting, "must not carry credentials or a query: the key goes in api_key")
    return value.strip().rstrip("/")


def _names(value: Any, setting: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(setting, "must be a list of names, e.g. email,slack")
    for name in value:
        if allowed is not None and name not in allowed:
            raise ConfigError(setting, f"{name!r} is not one of {', '.join(allowed)}")
        if allowed is None and not PLUGIN_NAME.match(name):
            raise ConfigError(setting, f"{name!r} is not a plugin name")
    return tuple(dict.fromkeys(value))


def _number(value: Any, setting: str, default: float, zero: bool = True) -> float:
    if value in (None, ""):
        return default
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if not (number > 0 or (zero and number == 0)):
        raise ConfigError(setting, f"must be a number of seconds, {'at least' if zero else 'more than'} 0, "
                                   f"not {value!r}")
    return number


def _actions(value: Any, setting: str) -> dict[str, tuple[str, ...]]:
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(setting, 'must map trigger codes to actions, e.g. {"PROPAL_CLOSE_SIGNED": ["create_order"]}')
    actions: dict[str, tuple[str, ...]] = {}
    for code, names in value.items():
        code = canonical_code(str(code).strip().upper())
        names = _names(names, setting, tuple(ACTIONS)) or ()
        for name in names:
            if not code.startswith(ACTIONS[name]):
                after = " or ".join(p + "*" if p.endswith("_") else p for p in ACTIONS[name])
                raise ConfigError(setting, f"{name} follows {after}, not {code}")
        if names:
            actions[code] = names
    return actions


def _source(name: str, table: Any, where: str, key_setting: str, url_setting: str) -> Source:
    if not isinstance(table, Mapping):
        raise ConfigError(where, "must be a table with api_key (and api_url)")
    unknown = set(table) - {"api_key", "api_url"}
    if unknown:
        raise ConfigError(where, f"unknown keys: {', '.join(sorted(unknown))}")
    key = _text(table.get("api_key"))
    if key is None:
        raise ConfigError(key_setting, "is required: the DOLAPIKEY of the Dolibarr user the plugin acts as")
    return Source(name=name, api_key=key, api_url=_url(table.get("api_url"), url_setting), where=key_setting)


def parse_settings(config: Mapping[str, Any] | None) -> Settings:
    """Check the plugin's config mapping; ``PluginDisabled`` when no Dolibarr API key is set."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ConfigError(env_name(unknown[0]), f"is not a setting of the plugin; its settings: "
                                                f"{', '.join(env_name(k) for k in KEYS[:-1])}")
    tables = config.get("sources") or {}
    if not isinstance(tables, Mapping):
        raise ConfigError("[plugins.dolibarr.sources]",
                          "must hold one table per source: [plugins.dolibarr.sources.NAME]")
    sources: dict[str, Source] = {}
    if config.get("api_key") not in (None, ""):
        sources["*"] = _source("*", {k: config.get(k) for k in ("api_key", "api_url") if k in config},
                               "DOLIBARR_WEBHOOKS_DOLIBARR_*", env_name("api_key"), env_name("api_url"))
    elif config.get("api_url") not in (None, ""):
        raise ConfigError(env_name("api_key"), f"is required with {env_name('api_url')}")
    for name, table in tables.items():
        where = TOML_SOURCES.format(name=name)
        sources[name] = _source(name, table, where, f"{where} api_key", f"{where} api_url")
    if not sources:
        raise PluginDisabled(f"no Dolibarr API key: set {env_name('api_key')} or [plugins.dolibarr.sources.NAME]")
    outcomes = _names(config.get("outcomes"), env_name("outcomes"), OUTCOMES)
    return Settings(
        sources=sources,
        plugins=_names(config.get("plugins"), env_name("plugins")),
        outcomes=outcomes if outcomes is not None else OUTCOMES,
        actions=_actions(config.get("actions"), env_name("actions")),
        timeout=_number(config.get("timeout"), env_name("timeout"), DEFAULT_TIMEOUT, zero=False),
        settle_delay=_number(config.get("settle_delay"), env_name("settle_delay"), DEFAULT_SETTLE_DELAY),
    )
