"""``webhooks check``: the configuration read as the service would, reported in plain words.

The command does not need a working application: it reads the settings, opens the
store and loads the plugins itself, so a configuration that stops ``create_app`` is
reported (with the setting to fix) instead of ending in a traceback. Exit status 1
when anything is an error.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from pathlib import Path

import click

from ..settings import ENV_PREFIX, MIN_SECRET_LENGTH, ConfigError, Settings, env_name, load_settings
from ..logs import redact
from ..store import error_line
from .group import emit, json_option, webhooks
from .targets import LOCAL_URL_WARNING, is_local_url, target_url

from ..report import ERROR, INFO, LEVELS, OK, WARNING, Finding, Report, describe_plugin, mask_report  # noqa: F401

GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
# Words found in copied examples and placeholders; a real secret is random and contains none.
PLACEHOLDER_WORDS = ("change", "replace", "example", "placeholder", "your", "secret", "password", "passwd",
                     "dolibarr", "webhook", "token", "test", "demo", "sample", "default", "qwerty", "azerty",
                     "letmein", "admin", "xxxx", "1234", "0000")
RECOMMENDED_BITS = 96


# -- secrets ------------------------------------------------------------------------------
def _shannon_bits_per_char(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _pool_size(text: str) -> int:
    pool = 0
    pool += 26 if any(c.islower() for c in text) else 0
    pool += 26 if any(c.isupper() for c in text) else 0
    pool += 10 if any(c.isdigit() for c in text) else 0
    pool += 32 if any(not c.isalnum() for c in text) else 0
    return max(pool, 1)


def _longest_run(text: str) -> int:
    """Longest stretch of characters stepping by +1 or -1 (``abcdef``, ``98765``)."""
    best = run = 1
    step = 0
    for a, b in zip(text, text[1:]):
        diff = ord(b) - ord(a)
        if diff in (1, -1) and (run == 1 or diff == step):
            run, step = run + 1, diff
        elif diff in (1, -1):
            run, step = 2, diff
        else:
            run, step = 1, 0
        best = max(best, run)
    return best


def secret_strength(secret: str) -> tuple[str, str, int]:
    """``(level, plain words, estimated bits)`` for one secret."""
    bits = int(len(secret) * math.log2(_pool_size(secret)))
    lowered = secret.lower()
    if len(secret) < MIN_SECRET_LENGTH:
        return ERROR, f"only {len(secret)} characters; at least {MIN_SECRET_LENGTH} are required", bits
    words = [w for w in PLACEHOLDER_WORDS if w in lowered]
    if words:
        return ERROR, (f"looks like a placeholder or an example (contains {words[0]!r}); "
                       f"generate a random one: {GENERATE_SECRET}"), bits
    if any(lowered == (lowered[:n] * (len(lowered) // n + 1))[:len(lowered)] for n in range(1, len(lowered) // 2 + 1)):
        return ERROR, f"is a short pattern repeated; generate a random one: {GENERATE_SECRET}", bits
    if _shannon_bits_per_char(secret) < 2.5 or _longest_run(secret) >= 5:
        return ERROR, f"is too regular to be random; generate a random one: {GENERATE_SECRET}", bits
    if bits < RECOMMENDED_BITS:
        return WARNING, (f"{len(secret)} characters, about {bits} bits: weaker than a generated secret "
                         f"({GENERATE_SECRET} gives about 256)"), bits
    return OK, f"{len(secret)} characters, about {bits} bits", bits


def _check_secrets(settings: Settings, report: Report) -> None:
    sources = settings.sources
    if not any(source.secrets for source in sources.values()):
        if settings["INSECURE_NO_AUTH"]:
            report.add(ERROR, "secrets", f"{env_name('INSECURE_NO_AUTH')} is on and no secret is set: anyone who "
                                         "can reach the service can post events. For local trials only.",
                       env_name("INSECURE_NO_AUTH"))
        else:
            report.add(ERROR, "secrets", f"no secret is set: every event is refused with 401. Set "
                                         f"{env_name('SECRET')} (generate one: {GENERATE_SECRET}).",
                       env_name("SECRET"))
        return
    if settings["INSECURE_NO_AUTH"]:
        report.add(INFO, "secrets", f"{env_name('INSECURE_NO_AUTH')} is on but has no effect: secrets are set",
                   env_name("INSECURE_NO_AUTH"))
    for source in sources.values():
        setting = env_name("SECRET") if source.name == settings["SOURCE"] else f"[sources.{source.name}]"
        for index, secret in enumerate(source.secrets):
            level, words, _bits = secret_strength(secret)
            which = f"secret {index + 1} of source {source.name}" if len(source.secrets) > 1 else \
                f"secret of source {source.name}"
            report.add(level, "secrets", f"{which}: {words}", setting)


# -- store ----------------------------------------------------------------------------------
def _check_store(settings: Settings, report: Report) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from ..store import SCHEMA_VERSION, Store, refuses_writes, schema_problem, sqlite_folder_problem

    url = settings["DATABASE_URL"]
    shown = redact(url, keep_user=True)
    migrate_hint = "run 'dolibarr-webhooks migrate'"
    if settings["AUTO_MIGRATE"]:
        migrate_hint += " (or start the service: AUTO_MIGRATE is on)"
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1]) if ":///" in url else None
        if path is not None and str(path) not in ("", ":memory:") and not path.exists():
            problem = sqlite_folder_problem(str(path))
            if problem:
                report.add(ERROR, "store", f"SQLite file {path}: {problem}", env_name("DATABASE_URL"))
            else:
                level = INFO if settings["AUTO_MIGRATE"] else ERROR
                report.add(level, "store", f"SQLite file {path} does not exist yet: it is created and migrated at "
                                           f"first start" if settings["AUTO_MIGRATE"] else
                           f"SQLite file {path} does not exist and {env_name('AUTO_MIGRATE')} is off: {migrate_hint}",
                           env_name("DATABASE_URL"))
            return
        report.add(INFO, "store", "SQLite keeps everything on this host: one host only; use PostgreSQL to run the "
                                  "service on several hosts")
    # A store that does not answer must not hang the check: libpq reads this variable.
    os.environ.setdefault("PGCONNECT_TIMEOUT", "5")
    try:
        store = Store(url, settings["SQLITE_SYNCHRONOUS"])
    except Exception as exc:  # a driver missing or a URL SQLAlchemy refuses
        report.add(ERROR, "store", f"cannot use {shown}: {error_line(exc)}", env_name("DATABASE_URL"))
        return
    try:
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        version = store.schema_version()
    except SQLAlchemyError as exc:
        report.add(ERROR, "store", f"cannot reach {shown}: {error_line(exc)}", env_name("DATABASE_URL"))
        return
    finally:
        store.dispose()
    problem = schema_problem(version)
    # A PostgreSQL server answers reads while it takes no write (a standby, a primary demoted
    # by a failover): the write /ready makes tells. (An SQLite file's writes are this user's.)
    failure = store.probe_write() if problem is None and store.is_postgres else None
    if failure:
        store.dispose()  # the probe's connection (on success, the credentials' look closes it)
        hint = (": it is a standby, or a primary demoted by a failover; name the primary, or every server with "
                "?target_session_attrs=read-write (postgresql://user@db1:5432,db2:5432/name?...)"
                if refuses_writes(failure) else "")  # its SQLSTATE: the server's words may be in its language
        report.add(ERROR, "store", f"{shown} answers but a write fails ({error_line(failure)}){hint}",
                   env_name("DATABASE_URL"))
    elif problem is None:
        report.add(OK, "store", f"{shown} answers; schema version {version} is current")
        _check_stored_credentials(settings, store, report)
    elif version > SCHEMA_VERSION:
        report.add(ERROR, "store", f"{shown}: {problem}: upgrade dolibarr-webhooks", env_name("DATABASE_URL"))
    elif settings["AUTO_MIGRATE"]:
        report.add(WARNING, "store", f"{shown} answers; {problem}: it is migrated at the next start "
                                     f"(AUTO_MIGRATE is on)")
    else:
        report.add(ERROR, "store", f"{shown} answers but is not migrated ({problem}): {migrate_hint}",
                   env_name("AUTO_MIGRATE"))


def _check_stored_credentials(settings: Settings, store, report: Report) -> None:
    """Events stored before credentials were masked, or under another rule, may hold
    Dolibarr users' passwords and API keys: say how many and how to clean them."""
    from sqlalchemy.exc import SQLAlchemyError

    from ..credentials import expected_rules

    try:
        stale = store.count_stale(*expected_rules(settings.sources))
    except SQLAlchemyError as exc:
        report.add(ERROR, "credentials", f"cannot read the store: {error_line(exc)}")
        return
    finally:
        store.dispose()
    if stale:
        report.add(WARNING, "credentials", f"{stale} stored events were scrubbed under another rule or none, and may "
                                           "hold Dolibarr users' passwords or API keys: run 'dolibarr-webhooks scrub'",
                   env_name("SCRUB_KEYS"))
    else:
        report.add(OK, "credentials", "every stored event had its credentials masked under the current rule")


# -- plugins --------------------------------------------------------------------------------
def _plugin_names() -> list[str]:
    from importlib import metadata

    from ..plugins import DEFAULT_PLUGINS, ENTRY_POINT_GROUP

    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)} | set(DEFAULT_PLUGINS))


def _check_plugins(settings: Settings, report: Report) -> None:
    from ..plugins import build_plugins

    try:
        plugins = build_plugins(settings)
    except ConfigError as whole:
        # One plugin stops start-up; load each alone to say which ones work.
        blocked = set(settings["BLOCK_PLUGINS"])
        chosen = settings["PLUGINS"]
        for name in _plugin_names():
            if name in blocked or (chosen and name not in chosen) or name == "catalogue":
                continue
            alone = dataclasses.replace(settings, values={**settings.values, "PLUGINS": [name]})
            try:
                info = build_plugins(alone).info.get(name)
            except ConfigError as exc:
                report.add(ERROR, "plugins", f"plugin {name} stops start-up: {exc}", exc.setting)
                continue
            if info is not None:
                describe_plugin(report, info)
        if not any(f.level == ERROR and f.topic == "plugins" for f in report.findings):
            report.add(ERROR, "plugins", f"the plugins stop start-up: {whole}", whole.setting)
        return
    for info in plugins.info.values():
        describe_plugin(report, info)
        never = [c for c in info.events or () if (known := plugins.catalogue.get(c)) and known.never_fired]
        if never:
            report.add(WARNING, "plugins", f"plugin {info.name} waits for {', '.join(never)}, which Dolibarr's target "
                                           "form offers but no Dolibarr release fires: it never comes")
    if not plugins.handlers():
        report.add(WARNING, "plugins", "no enabled plugin handles events: they are stored and nothing else happens")


# -- where Dolibarr posts ------------------------------------------------------------------
def _check_targets(settings: Settings, report: Report) -> None:
    if not settings["PUBLIC_URL"]:
        report.add(WARNING, "target", f"{env_name('PUBLIC_URL')} is not set: the URL below uses this host's "
                                      f"address on its network and the port; set it to the address Dolibarr reaches "
                                      f"(https://webhooks.example.com behind nginx)", env_name("PUBLIC_URL"))
    elif settings["PUBLIC_URL"].startswith("http://"):
        report.add(WARNING, "target", f"{env_name('PUBLIC_URL')} is plain http: the secret in the URL crosses the "
                                      "network in clear; put the service behind TLS (contrib/nginx)",
                   env_name("PUBLIC_URL"))
    for source in settings.sources.values():
        if not source.secrets:
            continue
        url = target_url(settings, source.secrets[0])
        local = is_local_url(url)
        report.targets.append({"source": source.name, "url": url, "local": local})
        if local:
            report.add(WARNING, "target", f"source {source.name}: {LOCAL_URL_WARNING}", env_name("PUBLIC_URL"))


# -- the rest of production -----------------------------------------------------------------
def _check_ratelimit(settings: Settings, report: Report) -> None:
    rule = settings["RATELIMIT"]
    if not rule:
        report.add(INFO, "rate limit", f"no rate limit ({env_name('RATELIMIT')} is empty); nginx's limit_req may "
                                       "stand in front")
        return
    from limits import parse_many

    try:
        parse_many(rule)
    except ValueError:
        report.add(ERROR, "rate limit", f"{rule!r} is not a rate such as 600/minute", env_name("RATELIMIT"))
        return
    storage_url = settings["RATELIMIT_STORAGE_URL"]
    if storage_url.startswith("memory://"):
        report.add(WARNING, "rate limit", f"{rule} counted in memory: each gunicorn worker counts on its own; set "
                                          f"{env_name('RATELIMIT_STORAGE_URL')}=redis://127.0.0.1:6379 to share",
                   env_name("RATELIMIT_STORAGE_URL"))
        return
    from limits.storage import storage_from_string

    from ..web.ratelimit import REDIS_TIMEOUTS

    shown = redact(storage_url, keep_user=True)
    try:
        options = REDIS_TIMEOUTS if storage_url.startswith("redis") else {}
        reachable = storage_from_string(storage_url, **options).check()
    except Exception as exc:  # a scheme limits does not know, a client library missing
        report.add(ERROR, "rate limit", f"cannot use {shown}: {error_line(exc)}",
                   env_name("RATELIMIT_STORAGE_URL"))
        return
    if reachable:
        report.add(OK, "rate limit", f"{rule} per source, and {rule} refused requests per client address, "
                                     f"counted in {shown}")
    else:
        report.add(ERROR, "rate limit", f"{shown} does not answer: requests are let through and "
                                        f"counted in each process's memory until it does (the service logs it "
                                        f"and /ready shows it)", env_name("RATELIMIT_STORAGE_URL"))


def _check_operations(settings: Settings, report: Report) -> None:
    if settings["ALLOWED_IPS"] and not settings["TRUSTED_PROXIES"]:
        report.add(INFO, "network", f"{env_name('ALLOWED_IPS')} is set and {env_name('TRUSTED_PROXIES')} is 0: "
                                    f"behind nginx every request comes from nginx's address; set "
                                    f"{env_name('TRUSTED_PROXIES')}=1 there",
                   env_name("TRUSTED_PROXIES"))
    if settings["METRICS"] and not settings["METRICS_TOKEN"]:
        report.add(INFO, "metrics", "GET /metrics is open: restrict it at the proxy (contrib/nginx does) or set "
                                    f"{env_name('METRICS_TOKEN')}", env_name("METRICS_TOKEN"))
    if settings["EMBEDDED_WORKER"]:
        report.add(INFO, "worker", f"each web process also delivers events ({env_name('EMBEDDED_WORKER')} is on): "
                                   "no separate worker is needed", env_name("EMBEDDED_WORKER"))
    else:
        report.add(INFO, "worker", "'dolibarr-webhooks serve' delivers events itself; under gunicorn "
                                   f"(contrib/gunicorn.conf.py, {env_name('EMBEDDED_WORKER')} off) "
                                   "'dolibarr-webhooks worker' does: keep it running "
                                   "(contrib/systemd/dolibarr-webhooks-worker.service)")
    known = [name.upper().replace("-", "_") + "_" for name in _plugin_names()]
    for key in sorted(settings.plugin_raw):
        if key == "ENV_FILE" or any(key.startswith(prefix) for prefix in known):
            continue
        report.add(WARNING, "settings", f"{ENV_PREFIX}{key} is not a setting of dolibarr-webhooks or of an "
                                        f"installed plugin (a typo?); it is ignored", ENV_PREFIX + key)


def _origins(settings: Settings) -> str:
    """Where the settings came from, as load_settings read them."""
    # The file's own name (--env-file, DOLIBARR_WEBHOOKS_ENV_FILE) is where they came from, not one of them.
    counts = Counter(where for key, where in settings.origins.items() if key != "ENV_FILE")
    if not counts:
        return "all defaults: no .env file and no DOLIBARR_WEBHOOKS_* variable"
    named = {"environment": "the environment", "legacy environment": "the environment (the Node guide's names)"}
    parts = [f"{named.get(where, where)} ({count} setting{'s' if count != 1 else ''})"
             for where, count in counts.items()]
    return "read from " + ", ".join(parts) + "; the rest are defaults"


def run_checks(env_file: str | None = None) -> Report:
    """Every check, in the order an operator fixes things."""
    report = Report()
    # check's own --env-file names the file as the commands' (DOLIBARR_WEBHOOKS_ENV_FILE) does.
    environ = os.environ if env_file is None else {**os.environ, env_name("ENV_FILE"): env_file}
    try:
        settings = load_settings(environ=environ)
    except ConfigError as exc:
        report.add(ERROR, "settings", f"{exc.setting}: {exc.message}", exc.setting)
        return report
    report.add(OK, "settings", _origins(settings))
    _check_secrets(settings, report)
    _check_store(settings, report)
    _check_plugins(settings, report)
    _check_ratelimit(settings, report)
    _check_operations(settings, report)
    _check_targets(settings, report)
    mask_report(report, settings)
    return report


def render(report: Report) -> list[str]:
    width = max(len(level) for level in LEVELS)
    lines = [f"{f.level.upper().ljust(width)}  {f.topic}: {f.message}" for f in report.findings]
    if report.targets:
        lines += ["", "Paste this URL in Dolibarr (Home > Setup > Modules > Webhook > Targets > New target):"]
        for target in report.targets:
            which = f"    (source {target['source']})" if len(report.targets) > 1 else ""
            lines.append(f"    {target['url']}{which}")
    errors, warnings = report.count(ERROR), report.count(WARNING)
    lines += ["", ("Ready for production." if report.ok and not warnings else
                   f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}.")]
    return lines


@webhooks.command("check", with_appcontext=False)
@json_option
@click.option("--env-file", default=None, help="Read this .env file (default: DOLIBARR_WEBHOOKS_ENV_FILE or .env).")
def check_command(as_json: bool, env_file: str | None) -> None:
    """Check the configuration, the store, the plugins and the URL to give Dolibarr."""
    report = run_checks(env_file)
    emit(report.to_dict(), as_json, render(report))
    if not report.ok:
        raise SystemExit(1)
