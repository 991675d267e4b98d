"""The contrib files as files: the settings example, gunicorn's configuration, the README;
and the redaction every log relies on."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from gunicorn.config import Config

from dolibarr_webhooks.settings import SETTINGS, load_settings
from dolibarr_webhooks.web.gunicorn import (BODY_DEADLINE, HEAD_DEADLINE, SERVE_THREADS, RedactingLogger,
                                            web_processes, wipe_multiproc_dir)
from dolibarr_webhooks.logs import redact, scrub
from dolibarr_webhooks.web.ratelimit import key_prefix
from production_helpers import CONTRIB, ENV_EXAMPLE, GUNICORN_CONF, ROOT

SECRET = "Zq8vN2kLw5RtY7uPx3aB9cDe4fGh"


# -- contrib/dolibarr-webhooks.env.example ------------------------------------------------------
def _example_blocks() -> dict[str, list[str]]:
    """Each variable of the example file -> the comment lines just above it."""
    blocks: dict[str, list[str]] = {}
    comments: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?([A-Z][A-Z0-9_]*)=", line)
        if match:
            blocks.setdefault(match.group(1), list(comments))
            continue
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
        else:
            comments = []
    return blocks


def _shown_default(default) -> str:
    if isinstance(default, bool):
        return "true" if default else "false"
    if default in ("", None):
        return "(empty)"
    return str(default)


@pytest.mark.parametrize("key", sorted(SETTINGS))
def test_env_example_documents_every_core_setting(key):
    blocks = _example_blocks()
    name = f"DOLIBARR_WEBHOOKS_{key}"
    assert name in blocks, f"{name} is missing from {ENV_EXAMPLE.relative_to(ROOT)}: add it with its help and default"
    default, _parser, help_text = SETTINGS[key]
    comments = blocks[name]
    assert help_text in comments, f"{name}: the comment above it must be the help text {help_text!r}"
    assert f"default: {_shown_default(default)}" in comments, f"{name}: say 'default: {_shown_default(default)}'"


def _plugin_variables() -> dict[str, set[str]]:
    """Plugin settings as the plugins document them: their README tables, and for email
    (no README yet) the keys its configuration module accepts."""
    found: dict[str, set[str]] = {}
    for readme in sorted((ROOT / "plugins").glob("*/README.rst")):
        names = set(re.findall(r"DOLIBARR_WEBHOOKS_(?:EMAIL|SLACK|SYNC|DOLIBARR)_[A-Z0-9_]*[A-Z0-9]",
                               readme.read_text()))
        if names:
            found[readme.parent.name] = names
    try:
        from dolibarr_webhooks_email.config import RULE_KEYS, SERVER_KEYS
    except ImportError:
        pass
    else:
        found.setdefault("dolibarr-webhooks-email", set()).update(
            f"DOLIBARR_WEBHOOKS_EMAIL_{key.upper()}" for key in (SERVER_KEYS | RULE_KEYS) - {"rules"})
    return found


def test_env_example_documents_the_plugins_settings():
    found = _plugin_variables()
    plugins = {"dolibarr-webhooks-slack", "dolibarr-webhooks-sync", "dolibarr-webhooks-dolibarr"}
    assert plugins <= set(found), found.keys()
    blocks = _example_blocks()
    missing = sorted(name for names in found.values() for name in names if name not in blocks)
    assert not missing, f"plugin settings missing from the example: {missing}"
    for name in (n for names in found.values() for n in names):
        assert blocks[name], f"{name} has no comment saying what it does"


def test_env_example_is_read_by_the_service_once_filled_in(tmp_path):
    text = ENV_EXAMPLE.read_text()
    text = text.replace("\nDOLIBARR_WEBHOOKS_SECRET=\n", f"\nDOLIBARR_WEBHOOKS_SECRET={SECRET}\n")
    text = re.sub(r"\nDOLIBARR_WEBHOOKS_DATABASE_URL=.*\n",
                  f"\nDOLIBARR_WEBHOOKS_DATABASE_URL=sqlite:///{tmp_path}/x.db\n", text)
    env_file = tmp_path / "dolibarr-webhooks.env"
    env_file.write_text(text)
    settings = load_settings(environ={}, env_file=env_file)
    assert settings.sources["default"].secrets == (SECRET,)
    assert settings["TRUSTED_PROXIES"] == 1
    assert settings["PUBLIC_URL"] == "https://webhooks.example.com"
    assert not settings.plugin_raw, "only core settings are active in the example"
    # systemd's EnvironmentFile= takes KEY=value lines: no spaces around '=', no 'export'.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", line), line


# -- contrib/gunicorn.conf.py ---------------------------------------------------------------------
def _gunicorn_settings(tmp_path: Path, **env: str) -> dict[str, str]:
    gunicorn_own = ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS")
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("DOLIBARR_WEBHOOKS_", "GUNICORN_")) and k not in gunicorn_own}
    full_env.update({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
                     "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
                     "DOLIBARR_WEBHOOKS_SECRET": SECRET, **env})
    gunicorn = Path(sys.executable).parent / "gunicorn"
    result = subprocess.run([str(gunicorn), "-c", str(GUNICORN_CONF), "--print-config",
                             "dolibarr_webhooks:create_app()"],
                            cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.MULTILINE))


def test_gunicorn_conf_defaults_fit_dolibarr(tmp_path):
    conf = _gunicorn_settings(tmp_path)
    # Threads, as serve: the requests a process has at once share a transaction (store/batch.py).
    assert conf["worker_class"] == "dolibarr_webhooks.web.gunicorn.ThreadWorker", "gunicorn's gthread, JSON errors"
    assert conf["threads"] == str(SERVE_THREADS)
    # A client that stalls is dropped before the worker timeout could kill its worker.
    assert HEAD_DEADLINE + BODY_DEADLINE < int(conf["timeout"])
    assert conf["bind"] == "['127.0.0.1:8080']", "loopback only, behind nginx"
    assert int(conf["workers"]) == max(2, min(2 * os.cpu_count(), 8)), "two processes per CPU, at least 2"
    assert int(conf["timeout"]) < 30 and int(conf["graceful_timeout"]) < 30, "Dolibarr gives up after 30 s"
    assert conf["forwarded_allow_ips"] == "['127.0.0.1', '::1']"
    assert conf["logger_class"] == "dolibarr_webhooks.web.gunicorn.RedactingLogger"
    assert conf["preload_app"] == "False"
    assert conf["accesslog"] == "None", "at the default level the application writes the access line"
    assert "%(u)s" not in conf["access_log_format"] and "authorization" not in conf["access_log_format"].lower()
    assert conf["child_exit"] == "<child_exit()>" and conf["on_starting"] == "<on_starting()>"
    assert (tmp_path / "metrics").is_dir()


def test_gunicorn_writes_the_access_line_only_where_the_application_does_not(tmp_path):
    """One access line per request in the journal: the application's at info and debug,
    gunicorn's at warning and above (the application's access logger writes at info);
    GUNICORN_ACCESSLOG, set, wins either way."""
    by_level = {level: _gunicorn_settings(tmp_path, DOLIBARR_WEBHOOKS_LOG_LEVEL=level)["accesslog"]
                for level in ("debug", "info", "warning", "error")}
    assert by_level == {"debug": "None", "info": "None", "warning": "-", "error": "-"}
    assert _gunicorn_settings(tmp_path, LOG_LEVEL="warning")["accesslog"] == "-", "the legacy variable too"
    assert _gunicorn_settings(tmp_path, GUNICORN_ACCESSLOG="-")["accesslog"] == "-"
    a_file = "/var/log/x/access.log"
    assert _gunicorn_settings(tmp_path, GUNICORN_ACCESSLOG=a_file)["accesslog"] == a_file
    none_at_warning = _gunicorn_settings(tmp_path, GUNICORN_ACCESSLOG="", DOLIBARR_WEBHOOKS_LOG_LEVEL="warning")
    assert none_at_warning["accesslog"] == "None"


def test_web_processes_are_two_per_cpu_from_2_to_8():
    """serve and the configuration file share one count: a second process per CPU runs Python
    while another waits for its GIL in the middle of a commit (issue #15)."""
    assert [web_processes(cpus=n) for n in (1, 2, 3, 4, 16)] == [2, 4, 6, 8, 8]
    assert web_processes() == max(2, min(2 * os.cpu_count(), 8))


def test_gunicorn_conf_reads_the_environment(tmp_path):
    conf = _gunicorn_settings(tmp_path, WEB_CONCURRENCY="3", GUNICORN_BIND="127.0.0.1:9001,unix:/tmp/x.sock",
                              GUNICORN_TIMEOUT="15", GUNICORN_GRACEFUL_TIMEOUT="12", GUNICORN_ACCESSLOG="",
                              DOLIBARR_WEBHOOKS_LOG_LEVEL="warning", FORWARDED_ALLOW_IPS="127.0.0.1",
                              GUNICORN_THREADS="4")
    assert (conf["workers"], conf["threads"]) == ("3", "4")
    assert conf["bind"] == "['127.0.0.1:9001', 'unix:/tmp/x.sock']"
    assert (conf["timeout"], conf["graceful_timeout"]) == ("15", "12")
    assert conf["accesslog"] == "None"
    assert conf["loglevel"] == "warning"
    assert conf["forwarded_allow_ips"] == "['127.0.0.1']"
    assert _gunicorn_settings(tmp_path, DOLIBARR_WEBHOOKS_PORT="8123")["bind"] == "['127.0.0.1:8123']"


def test_wipe_keeps_the_files_of_live_processes(tmp_path):
    live = tmp_path / f"counter_{os.getppid()}.db"  # the process that started pytest: alive
    dead = tmp_path / "counter_999999999.db"
    for path in (live, dead):
        path.write_bytes(b"")
    assert wipe_multiproc_dir(str(tmp_path)) == 1
    assert live.exists() and not dead.exists()


# -- redaction --------------------------------------------------------------------------------------
@pytest.mark.parametrize("target, expected", [
    (f"/webhook/{SECRET}", "/webhook/***"),
    (f"/webhook/{SECRET}/events", "/webhook/***/events"),
    (f"/webhook/{SECRET}/test", "/webhook/***/test"),
    ("/webhook/events", "/webhook/events"),
    ("/webhook/test", "/webhook/test"),
    (f"/WEBHOOK/{SECRET}", "/WEBHOOK/***"),
    (f"/%77ebhook/{SECRET}", "/webhook/***"),
    (f"/webhook?token={SECRET}", "/webhook?token=***"),
    (f"/webhook?a=1&%74oken={SECRET}&b=2", "/webhook?a=1&%74oken=***&b=2"),
    (f"/webhook?api_key={SECRET}", "/webhook?api_key=***"),
    (f"https://dolibarr:{SECRET}@hooks.example/webhook", "https://***@hooks.example/webhook"),
    (f"https://{SECRET}@hooks.example/webhook", "https://***@hooks.example/webhook"),
    ("/health", "/health"),
])
def test_redact(target, expected):
    assert redact(target) == expected
    assert SECRET not in redact(target)


def test_scrub_free_text():
    basic = base64.b64encode(f"dolibarr:{SECRET}".encode()).decode()
    text = (f'Error handling request /webhook/{SECRET}?token={SECRET} Authorization: Bearer {SECRET} '
            f'"authorization": "Basic {basic}" https://u:{SECRET}@h/ /webhooks/{SECRET}')
    cleaned = scrub(text, [SECRET])
    assert SECRET not in cleaned and basic not in cleaned
    assert "/webhook/***" in cleaned
    # Without the secret known, the shapes that carry one are still masked.
    cleaned = scrub(text.replace(f" /webhooks/{SECRET}", ""))
    assert SECRET not in cleaned and basic not in cleaned


@pytest.mark.parametrize("text, expected", [
    # The patterns are case-insensitive, and Unicode folds the Kelvin sign to "k" and the long
    # s to "s": such a line is matched by the regexes, not passed over by scrub's quick look.
    (f"POST /webhoo\u212a/{SECRET} 200", "POST /webhoo\u212a/*** 200"),
    (f"x-dolibarr-\u017fignature: {SECRET}", "x-dolibarr-\u017fignature: ***"),
    (f"AUTHORIZATION=Basic {SECRET}", "AUTHORIZATION=Basic ***"),
    (f"GET /x?a=1&Api_Key={SECRET}#f", "GET /x?a=1&Api_Key=***#f"),
    (f"redis://u:{SECRET}@h/0", "redis://***@h/0"),
    ("POST /webhook/events 200 from 127.0.0.1", "POST /webhook/events 200 from 127.0.0.1"),
])
def test_scrub_under_unicode_case_folding_and_without_secrets_known(text, expected):
    assert scrub(text) == expected


def test_redacting_logger_atoms():
    config = Config()
    # Atoms are redacted when a format prints them; header names in any case, as gunicorn reads them.
    config.set("access_log_format", '%(r)s %(u)s %({Authorization}i)s %({x-dolibarr-signature}i)s %({cookie}i)s')
    logger = RedactingLogger(config)
    basic = base64.b64encode(f"{SECRET}:x".encode()).decode()
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": f"/webhook/{SECRET}?token={SECRET}",
               "PATH_INFO": f"/webhook/{SECRET}", "QUERY_STRING": f"token={SECRET}", "SERVER_PROTOCOL": "HTTP/1.1",
               "REMOTE_ADDR": "127.0.0.1", "HTTP_AUTHORIZATION": f"Basic {basic}", "HTTP_REFERER": f"/webhook/{SECRET}",
               "wsgi.input": object()}

    class Response:
        status = "200 OK"
        headers = [("X-Request-Id", "abc")]
        sent = 10

    class Request:
        headers = [("AUTHORIZATION", f"Basic {basic}"), ("X-DOLIBARR-SIGNATURE", "sha256=" + "0" * 64),
                   ("COOKIE", "session=abc")]

    import datetime

    atoms = logger.atoms(Response(), Request(), environ, datetime.timedelta(milliseconds=3))
    everything = repr(atoms)
    assert SECRET not in everything and basic not in everything
    assert atoms["r"] == "POST /webhook/***?token=*** HTTP/1.1"
    assert atoms["U"] == "/webhook/***" and atoms["q"] == "token=***"
    assert atoms["u"] == "***"
    assert atoms["{authorization}i"] == atoms["{x-dolibarr-signature}i"] == atoms["{cookie}i"] == "***"
    assert atoms["{x-request-id}o"] == "abc"
    # What no line prints is not even kept: the referer, the environ's objects.
    assert "{referer}i" not in atoms and "{wsgi.input}e" not in atoms


def test_ratelimit_key_prefix_is_per_deployment_and_hides_the_password():
    one = key_prefix("postgresql://app:hunter2@db/webhooks")
    assert one == key_prefix("postgresql://app:other-password@db/webhooks"), "the password is not part of it"
    assert one != key_prefix("postgresql://app@db/other")
    assert one.startswith("dolibarr_webhooks:") and "hunter2" not in one


def test_contrib_readme_is_valid_restructuredtext():
    docutils_core = pytest.importorskip("docutils.core")
    import io

    errors = io.StringIO()
    docutils_core.publish_doctree((CONTRIB / "README.rst").read_text(),
                                  settings_overrides={"warning_stream": errors, "report_level": 2, "halt_level": 5})
    assert errors.getvalue() == ""
