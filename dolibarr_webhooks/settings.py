"""Settings: defaults, then ``.env``, then ``DOLIBARR_WEBHOOKS_*`` variables, then an optional
TOML file, then ``test_config``; each source overrides the one before.

Every value is checked here, once, so a bad setting stops start-up with a message
naming the variable instead of failing on the first request. A process reads them once
(``process_settings``) and hands the ``Settings`` to whoever needs them: gunicorn's master
reads them before it forks (``contrib/gunicorn.conf.py``, ``serve``), and its workers
inherit them; nothing travels back through ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from dotenv import dotenv_values

from .credentials import SENSITIVE_NAME
from .database_url import unusable
from .exceptions import ConfigError
from .logs import redact

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "DOLIBARR_WEBHOOKS_"
MIN_SECRET_LENGTH = 16
DEFAULT_SOURCE = "default"

# Variables the widely copied Node guide uses; they keep working.
LEGACY_VARIABLES = {"WEBHOOK_SECRET": "SECRET", "WEBHOOK_PORT": "PORT", "LOG_LEVEL": "LOG_LEVEL"}

DEFAULT_RETRY_SCHEDULE = "5s,5m,30m,2h,5h,10h,10h"  # close to Standard Webhooks' schedule


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``"500ms"``, ``"5s"``, ``"5m"``, ``"2h"``, ``"30d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m, 2h or 30d")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"16MiB"``, ``"10MB"``, ``"512k"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"{value!r} is not a size such as 16MiB")
    unit = (match.group(2) or "b").lower().rstrip("b").rstrip("i")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


def parse_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return [str(item).strip() for item in value if str(item).strip()]
    raise ValueError(f"{value!r} is not a list")


def parse_networks(value: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(item, strict=False) for item in parse_list(value)]
    except ValueError as exc:
        raise ValueError(f"not an address or CIDR range: {exc}") from None


def parse_positive_int(value: Any) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text
    return check


def parse_url(value: Any) -> str:
    text = str(value or "").strip()
    if text and not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"{text!r} is not an http(s) URL")
    return text.rstrip("/")


# A host name: labels of letters, digits and hyphens, separated by dots.
_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def parse_host(value: Any) -> str:
    """An address to listen on: an IP address (an IPv6 one with or without the brackets URLs
    give it) or a host name; empty is every interface. A port, a list or a space in it was a
    traceback from ``serve`` and ``check``."""
    text = str(value or "").strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        return ""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        if _HOST_NAME.match(text) and not text.replace(".", "").isdigit():
            return text
    raise ValueError(f"{value!r} is not an IP address or a host name (the port is DOLIBARR_WEBHOOKS_PORT)")


def parse_database_url(value: Any) -> str:
    text = str(value or "").strip()
    if not text:
        # The embedded default: a file in the working directory, created on first start.
        return "sqlite:///" + os.path.abspath("dolibarr-webhooks.sqlite3")
    shown = redact(text, keep_user=True)  # the message is printed: never its password
    if not re.match(r"^(sqlite|postgresql|postgres)(\+\w+)?://", text):
        raise ValueError(f"{shown!r} must start with sqlite:/// or postgresql://")
    if unusable(text):  # SQLAlchemy's own words would quote the whole URL, password and all
        raise ValueError(f"{shown!r} is not a URL of a database: write postgresql://user:password@host:port/database "
                         f"(host1:port1,host2:port2 for several servers), or sqlite:////path/to/file")
    return text


# Dolibarr gives up on a webhook after 30 s and fails the user's action.
DOLIBARR_TIMEOUT = 30.0


def parse_deadline(value: Any) -> float:
    seconds = parse_duration(value)
    if not 0 < seconds < DOLIBARR_TIMEOUT:
        raise ValueError(f"must be more than 0 and less than Dolibarr's {DOLIBARR_TIMEOUT:g} s")
    return seconds


def parse_schedule(value: Any) -> list[float]:
    delays = [parse_duration(item) for item in parse_list(value)]
    if not delays:
        raise ValueError("needs at least one delay")
    return delays


# Core settings: name (after the prefix) -> (default, parser, help). The help text is
# also what ``contrib/dolibarr-webhooks.env.example`` and ``webhooks check`` show.
SETTINGS: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "SECRET": ("", str, "shared secret of the default source (also WEBHOOK_SECRET)"),
    "SECRETS": ("", parse_list, "more secrets accepted at once, comma-separated, for rotation"),
    "INSECURE_NO_AUTH": (False, parse_bool, "accept events without any credential: local trials only"),
    "SOURCE": (DEFAULT_SOURCE, str, "name of the default source"),
    "DOLIBARR_URL": ("", parse_url, "root URL of the Dolibarr instance, for links to object cards"),
    "ALLOWED_IPS": ("", parse_networks, "addresses or CIDR ranges allowed to post, comma-separated"),
    "TRUSTED_PROXIES": (0, parse_positive_int, "number of reverse proxies whose X-Forwarded-For is trusted"),
    "MAX_BODY_SIZE": ("16MiB", parse_size, "largest request body accepted (413 above it)"),
    "STRICT": (False, parse_bool, "answer 400 to an authenticated body that cannot be parsed, instead of keeping it"),
    "SCRUB_KEYS": ("", parse_list, "object keys removed at every depth before storing (db is always removed)"),
    "DATABASE_URL": ("", parse_database_url, "sqlite:///path or postgresql://user@host/db"),
    "AUTO_MIGRATE": (True, parse_bool, "migrate the database schema at start-up"),
    "SQLITE_SYNCHRONOUS": ("FULL", parse_choice("full", "normal"), "SQLite fsync policy (FULL survives power loss)"),
    "REQUEST_DEADLINE": ("10s", parse_deadline,
                         "longest a webhook request may take, its wait behind the proxy included: an event not "
                         "stored by then is not stored at all (503)"),
    "DEDUP_WINDOW": ("10m", parse_duration, "same source, code, object and body within this time is a duplicate"),
    "RETENTION": ("7d", parse_duration, "delivered events older than this are purged by the worker"),
    "RETRY_SCHEDULE": (DEFAULT_RETRY_SCHEDULE, parse_schedule, "delays between attempts; after the last, dead"),
    "RETRY_JITTER": (0.2, float, "random fraction added to or taken from each retry delay"),
    "HANDLER_TIMEOUT": ("30s", parse_duration, "longest a plugin may take for one event"),
    "ALERT_INTERVAL": ("15m", parse_duration,
                       "at most one alert per failing plugin in this time; the failures after it wait for one digest"),
    "WORKER_CONCURRENCY": (2, parse_positive_int, "deliveries run at once for each plugin, per worker"),
    "LEASE": ("", lambda v: parse_duration(v) if v not in ("", None) else None,
              "time after which a delivery held by a dead worker is claimed again (default: timeout + 30s)"),
    "POLL_INTERVAL": ("50ms", parse_duration,
                      "how often an idle worker on SQLite looks for new deliveries where it cannot watch the "
                      "database file (no inotify); with a watch, every commit wakes it"),
    "SHUTDOWN_GRACE": ("20s", parse_duration, "on SIGTERM, time given to running handlers before release"),
    "EMBEDDED_WORKER": (False, parse_bool,
                        "run the worker inside each gunicorn process (serve sets it; see contrib/gunicorn.conf.py)"),
    "PLUGINS": ("", parse_list, "load only these plugins (entry point names); empty loads all"),
    "BLOCK_PLUGINS": ("", parse_list, "never load these plugins (built-in ones included: log, catalogue)"),
    "TRACE_HOOKS": (False, parse_bool, "log every hook call"),
    "LOG_LEVEL": ("INFO", lambda v: parse_choice("debug", "info", "warning", "error", "critical")(v).upper(),
                  "log level (also LOG_LEVEL)"),
    "LOG_FORMAT": ("text", parse_choice("text", "json"), "text lines, or one JSON object per line"),
    "HOST": ("0.0.0.0", parse_host, "address the serve command listens on"),
    "PORT": (8080, parse_positive_int, "port the serve command listens on (also WEBHOOK_PORT)"),
    "PUBLIC_URL": ("", parse_url, "URL Dolibarr reaches this service at, for the printed target URL"),
    "RATELIMIT": ("", str, "requests allowed per source and per client address, e.g. '600/minute'; empty: none"),
    "RATELIMIT_STORAGE_URL": ("memory://", str, "memory:// or redis://host:6379 when several processes serve"),
    "METRICS": (True, parse_bool, "serve GET /metrics in Prometheus format"),
    "METRICS_TOKEN": ("", str, "bearer token required by /metrics; empty: open"),
    "CONFIG": ("", str, "path of a TOML file with sources and plugin rules"),
    "ADMIN_PASSWORD": ("", str, "password of the web dashboard at /admin/; empty: no dashboard (404)"),
    "ADMIN_USER": ("admin", str, "user name of the web dashboard"),
    "ADMIN_SECRET_KEY": ("", str, "key signing the dashboard's session cookies; empty: a key generated once into "
                         "dolibarr-webhooks-admin.key beside the SQLite store (set it when several hosts serve)"),
}


@dataclass(frozen=True)
class Source:
    """One Dolibarr instance or entity posting to us."""

    name: str
    secrets: tuple[str, ...] = ()
    allowed_ips: tuple[Any, ...] = ()
    dolibarr_url: str = ""
    scrub_keys: tuple[str, ...] = ()


@dataclass
class Settings:
    values: dict[str, Any]
    sources: dict[str, Source]
    plugin_raw: dict[str, dict[str, Any]] = field(default_factory=dict)  # PLUGIN_KEY -> value from env
    plugin_tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # [plugins.NAME] tables
    unknown: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)  # key -> the .env file, "environment" or TOML file

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def replace(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (core settings by name, checked as when read); the
        default source is built again from them (``serve``'s generated secret)."""
        values = dict(self.values)
        for key, value in changes.items():
            try:
                values[key] = SETTINGS[key][1](value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(env_name(key), str(exc)) from None
        sources = dict(self.sources)
        if {"SECRET", "SECRETS", "SOURCE", "ALLOWED_IPS", "DOLIBARR_URL", "SCRUB_KEYS"} & set(changes):
            sources.pop(self.values["SOURCE"], None)
            sources = {**build_sources(values, {}), **sources}
        return dataclasses.replace(self, values=values, sources=sources)

    @property
    def secrets(self) -> list[str]:
        """Every source's secrets, the default source's first."""
        return [secret for source in self.sources.values() for secret in source.secrets]

    @property
    def sensitive_values(self) -> list[str]:
        """Every value never to print: the sources' secrets, the metrics token, the dashboard's
        password and key, and each plugin
        setting named like a credential (the sync plugin's ``whsec_`` secret, an SMTP password,
        a Slack webhook URL), at any depth. Log formatters and ``check`` mask them wherever they
        appear: a pluggy trace prints each hook's ``config``, a plugin's error may quote it."""
        credentials = ("METRICS_TOKEN", "ADMIN_PASSWORD", "ADMIN_SECRET_KEY")
        found = [*self.secrets, *(self.values.get(key) or "" for key in credentials)]
        _collect_sensitive(self.plugin_raw, found)
        _collect_sensitive(self.plugin_tables, found)
        return [value for value in found if value]


def _collect_sensitive(value: Any, found: list[str], sensitive: bool = False) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _collect_sensitive(item, found, sensitive or bool(SENSITIVE_NAME.search(str(key))))
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_sensitive(item, found, sensitive)
    elif sensitive and isinstance(value, (str, int)) and not isinstance(value, bool):
        found.append(str(value).strip())


def _decode_env_value(text: str) -> Any:
    # Same rule as Flask's from_prefixed_env: JSON when it parses, else the string.
    try:
        return json.loads(text)
    except ValueError:
        return text


def _prefixed(mapping: Mapping[str, str | None]) -> dict[str, str]:
    found = {}
    for key, value in mapping.items():
        if value is None or not (key.startswith(ENV_PREFIX) or key in LEGACY_VARIABLES):
            continue
        _check_text(key, value)
        if key.startswith(ENV_PREFIX):
            found[key[len(ENV_PREFIX):]] = value
        else:
            found.setdefault("__legacy__" + LEGACY_VARIABLES[key], value)
    return found


def env_name(key: str) -> str:
    return ENV_PREFIX + key


def not_utf8(exc: UnicodeError) -> str:
    """A decoding error in one phrase, for the file or value a user must write again in UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    return f"not UTF-8 text (a lone surrogate at offset {exc.start})"


def _check_text(variable: str, value: str) -> None:
    """Refuse an environment variable that is not UTF-8. Python keeps such bytes as lone
    surrogates ("\\udce9"), which no header, signature, log line or stored text can hold: a
    secret set so passed ``check`` and answered 500 to every request, and a path so (a file
    named in Latin-1) made ``check`` a traceback."""
    if value.isascii():
        return
    try:
        value.encode("utf-8", "surrogateescape").decode()
    except UnicodeError as exc:
        raise ConfigError(variable, f"{not_utf8(exc)}; set it as UTF-8 text") from None


def env_file_path(environ: Mapping[str, str] | None = None) -> str:
    """The .env file the settings read when none is named: ``DOLIBARR_WEBHOOKS_ENV_FILE`` (what
    the commands' ``--env-file`` sets), else ``.env`` in the working directory."""
    return (os.environ if environ is None else environ).get(env_name("ENV_FILE"), ".env")


# Settings files are UTF-8; a byte order mark, which Windows editors write, is skipped: read as
# text it made the first line's name "\ufeffDOLIBARR_WEBHOOKS_...", a setting silently ignored.
_UTF8 = "utf-8-sig"


def _unreadable(path: str | os.PathLike, exc: Exception) -> str:
    """Why a settings file cannot be read, in one line: a file saved in another encoding
    (Latin-1, UTF-16 from an editor) said as such, not as a traceback."""
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read {path}: {not_utf8(exc)}; save it as UTF-8"
    return f"cannot read {path}: {exc}"


def load_settings(test_config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                  env_file: str | os.PathLike | None = None) -> Settings:
    """Read every source of settings, check them, and build the sources."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def take(values: Mapping[str, Any], where: str) -> None:
        for key, value in values.items():
            if key.startswith("__legacy__"):
                key = key[len("__legacy__"):]
                if key in raw and not origin[key].startswith("legacy"):
                    continue  # the prefixed variable wins over the Node guide's
                where_ = "legacy " + where
            else:
                where_ = where
            raw[key] = value
            origin[key] = where_

    if env_file is None:
        env_file = env_file_path(environ)
        # Named by --env-file or DOLIBARR_WEBHOOKS_ENV_FILE and not there: a typo in the path ran
        # the command on the defaults, another store and no secret, and said nothing. (serve
        # names the file itself, where it saves a secret it generates.)
        if env_name("ENV_FILE") in environ and env_file and not Path(env_file).is_file():
            raise ConfigError(env_name("ENV_FILE"), f"no file {env_file}")
    try:
        if env_file and Path(env_file).is_file():
            take(_prefixed(dotenv_values(env_file, encoding=_UTF8)), f"{env_file}")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(env_name("ENV_FILE"), _unreadable(env_file, exc)) from None
    take(_prefixed(environ), "environment")

    config_path = raw.get("CONFIG") or (test_config or {}).get("CONFIG") or ""
    toml_data: dict[str, Any] = {}
    if config_path:
        try:
            with open(config_path, encoding=_UTF8) as fh:
                toml_data = tomllib.loads(fh.read())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(env_name("CONFIG"), _unreadable(config_path, exc)) from None
        take({k.upper(): v for k, v in toml_data.items() if not isinstance(v, dict)}, str(config_path))

    values: dict[str, Any] = {}
    plugin_raw: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SETTINGS:
            continue
        plugin_raw[key] = _decode_env_value(value) if isinstance(value, str) else value
    test_config = dict(test_config or {})
    for key, (default, parser, _help) in SETTINGS.items():
        value = test_config.pop(key, raw.get(key, default))
        try:
            values[key] = parser(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(env_name(key), str(exc)) from None

    plugin_tables = {name.lower(): dict(table) for name, table in toml_data.get("plugins", {}).items()}
    for name, table in (test_config.pop("PLUGIN_CONFIG", None) or {}).items():
        plugin_tables.setdefault(name.lower(), {}).update(table)
    source_tables = dict(toml_data.get("sources", {}))
    source_tables.update(test_config.pop("SOURCES", None) or {})
    values.update(test_config)  # anything else a test sets (Flask's own keys, TESTING...)

    sources = build_sources(values, source_tables)
    if values["LEASE"] is None:
        values["LEASE"] = values["HANDLER_TIMEOUT"] + 30.0
    return Settings(values=values, sources=sources, plugin_raw=plugin_raw, plugin_tables=plugin_tables,
                    origins=origin)


# This process's settings, once read (``process_settings``). A module global on purpose: it is
# how gunicorn's workers, forked from the master that read the settings, get them without
# reading them again.
_process: Settings | None = None


def process_settings(env_file: str | os.PathLike | None = None) -> Settings:
    """This process's settings: read at the first call, then the same ``Settings`` for every
    caller (the gunicorn configuration, its logger, each worker's ``create_app``, a command)."""
    global _process
    if _process is None:
        _process = load_settings(env_file=env_file)
    return _process


def keep(settings: Settings) -> Settings:
    """Make ``settings`` this process's (``serve``, after its command-line options)."""
    global _process
    _process = settings
    return settings


def build_sources(values: dict[str, Any], tables: Mapping[str, Any]) -> dict[str, Source]:
    sources: dict[str, Source] = {}
    secrets = [s for s in [values["SECRET"], *values["SECRETS"]] if s]
    if secrets or not tables:
        sources[values["SOURCE"]] = Source(
            name=values["SOURCE"], secrets=tuple(secrets), allowed_ips=tuple(values["ALLOWED_IPS"]),
            dolibarr_url=values["DOLIBARR_URL"], scrub_keys=tuple(values["SCRUB_KEYS"]),
        )
    for name, table in tables.items():
        where = f"[sources.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(where, "must be a table")
        unknown = set(table) - {"secret", "secrets", "allowed_ips", "dolibarr_url", "scrub_keys"}
        if unknown:
            raise ConfigError(where, f"unknown keys: {', '.join(sorted(unknown))}")
        try:
            source_secrets = [s for s in [table.get("secret", ""), *parse_list(table.get("secrets"))] if s]
            sources[name] = Source(
                name=name, secrets=tuple(source_secrets),
                allowed_ips=tuple(parse_networks(table.get("allowed_ips"))),
                dolibarr_url=parse_url(table.get("dolibarr_url", "")),
                scrub_keys=tuple(values["SCRUB_KEYS"]) + tuple(parse_list(table.get("scrub_keys"))),
            )
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
        if not source_secrets:
            raise ConfigError(where, "needs a secret")
    seen: dict[str, str] = {}
    for source in sources.values():
        for secret in source.secrets:
            where = env_name("SECRET") if source.name == values["SOURCE"] else f"[sources.{source.name}]"
            if len(secret) < MIN_SECRET_LENGTH:
                raise ConfigError(where, f"a secret must have at least {MIN_SECRET_LENGTH} characters")
            if "/" in secret or "?" in secret or "#" in secret:
                raise ConfigError(where, "a secret cannot contain '/', '?' or '#' (it goes in the URL)")
            if secret in seen and seen[secret] != source.name:
                raise ConfigError(where, f"the same secret is used by source {seen[secret]}")
            seen[secret] = source.name
    return sources


def plugin_config(settings: Settings, name: str) -> dict[str, Any]:
    """The settings of one plugin: ``DOLIBARR_WEBHOOKS_<NAME>_*`` variables, then its TOML table.

    ``DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL`` becomes ``{"webhook_url": ...}``; ``__`` nests.
    """
    prefix = name.upper().replace("-", "_") + "_"
    config: dict[str, Any] = {}
    for key, value in settings.plugin_raw.items():
        if not key.startswith(prefix):
            continue
        *parents, leaf = key[len(prefix):].lower().split("__")
        target = config
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    config.update(settings.plugin_tables.get(name.lower(), {}))
    return config


def generate_secret() -> str:
    import secrets

    return secrets.token_urlsafe(32)
