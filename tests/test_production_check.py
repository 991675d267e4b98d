"""``dolibarr-webhooks check``: run as an operator would, on good and bad configurations."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dolibarr_webhooks.cli.check import ERROR, OK, WARNING, secret_strength
from dolibarr_webhooks.settings import SETTINGS
from dolibarr_webhooks.store import SCHEMA_VERSION
from dolibarr_webhooks.store import Store

BIN = Path(sys.executable).parent
SECRET = "Zq8vN2kLw5RtY7uPx3aB9cDe4fGh"
PUBLIC = "https://93.184.215.14"  # a public address literal: nothing is contacted, no DNS


def run(tmp_path: Path, *args: str, command: tuple[str, ...] = ("dolibarr-webhooks",), **env: str):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    full_env.update({"DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path}/webhooks.sqlite3"})
    full_env.update(env)
    command = (str(BIN / command[0]), *command[1:])
    return subprocess.run([*command, *args], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=120)


def check(tmp_path: Path, **env: str) -> tuple[int, dict]:
    result = run(tmp_path, "check", "--json", **env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def findings(report: dict, level: str | None = None, topic: str | None = None) -> list[dict]:
    return [f for f in report["findings"] if (level is None or f["level"] == level)
            and (topic is None or f["topic"] == topic)]


@pytest.fixture
def migrated(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/webhooks.sqlite3")
    store.migrate()
    store.dispose()
    return tmp_path


def test_a_good_configuration(migrated):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    assert code == 0 and report["ok"] and report["errors"] == 0, report
    assert report["targets"] == [{"source": "default", "url": f"{PUBLIC}/webhook/{SECRET}", "local": False}]
    assert any(f"schema version {SCHEMA_VERSION} is current" in f["message"] for f in findings(report, OK, "store"))
    assert any(f["message"].startswith("secret of source default: 28 characters") for f in findings(report, OK))
    log = [p for p in report["plugins"] if p["name"] == "log"]
    assert log and log[0]["status"] == "enabled"
    assert not findings(report, WARNING, "target")


def test_text_output_gives_the_url_to_paste(migrated):
    result = run(migrated, "check", DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Paste this URL in Dolibarr" in result.stdout
    assert f"    {PUBLIC}/webhook/{SECRET}\n" in result.stdout


def test_the_flask_command_is_the_same(migrated):
    result = run(migrated, "--app", "dolibarr_webhooks", "webhooks", "check", "--json", command=("flask",),
                 DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"]


@pytest.mark.parametrize("secret, words", [
    ("change-me-0123456789abcdef", "placeholder"),
    ("your-webhook-secret-here-42", "placeholder"),
    ("aaaaaaaaaaaaaaaaaaaaaaaa", "repeated"),
    ("ab12ab12ab12ab12ab12ab12", "repeated"),
    ("abcdefghijklmnopqrstuvwx", "too regular"),
])
def test_weak_secrets_are_errors(migrated, secret, words):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=secret, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    assert code == 1 and not report["ok"]
    errors = findings(report, ERROR, "secrets")
    assert len(errors) == 1 and words in errors[0]["message"], errors
    assert errors[0]["setting"] == "DOLIBARR_WEBHOOKS_SECRET"


def test_a_short_secret_stops_the_settings_and_is_named(migrated):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET="short-one")
    assert code == 1
    [error] = findings(report, ERROR)
    assert error["setting"] == "DOLIBARR_WEBHOOKS_SECRET" and "at least 16 characters" in error["message"]


def test_no_secret(migrated):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    assert code == 1
    [error] = findings(report, ERROR)
    assert error["setting"] == "DOLIBARR_WEBHOOKS_SECRET" and "every event is refused" in error["message"]
    assert report["targets"] == []
    code, report = check(migrated, DOLIBARR_WEBHOOKS_INSECURE_NO_AUTH="true")
    assert code == 1 and findings(report, ERROR)[0]["setting"] == "DOLIBARR_WEBHOOKS_INSECURE_NO_AUTH"


def test_a_store_that_cannot_be_reached(tmp_path):
    started = time.monotonic()
    code, report = check(tmp_path, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                         DOLIBARR_WEBHOOKS_DATABASE_URL="postgresql://postgres:pw-not-shown@127.0.0.1:1/x",
                         DOLIBARR_WEBHOOKS_AUTO_MIGRATE="false")
    assert time.monotonic() - started < 30
    assert code == 1
    [error] = findings(report, ERROR, "store")
    assert error["message"].startswith("cannot reach postgresql://postgres:***@127.0.0.1:1/x")
    assert "refused" in error["message"].lower()
    assert "pw-not-shown" not in json.dumps(report)
    # The rest of the report is still there.
    assert report["targets"] and findings(report, OK, "secrets")


def test_a_store_that_is_not_migrated(tmp_path):
    sqlite3.connect(tmp_path / "webhooks.sqlite3").close()  # exists, empty
    code, report = check(tmp_path, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                         DOLIBARR_WEBHOOKS_AUTO_MIGRATE="false")
    assert code == 1
    [error] = findings(report, ERROR, "store")
    assert "not migrated" in error["message"] and "dolibarr-webhooks migrate" in error["message"]
    assert error["setting"] == "DOLIBARR_WEBHOOKS_AUTO_MIGRATE"
    # With AUTO_MIGRATE on, the next start migrates it: a warning, not an error.
    code, report = check(tmp_path, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    assert code == 0, report
    assert "migrated at the next start" in findings(report, WARNING, "store")[0]["message"]


def test_a_postgresql_store(tmp_path, postgres_database_url):
    env = dict(DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
               DOLIBARR_WEBHOOKS_DATABASE_URL=postgres_database_url, DOLIBARR_WEBHOOKS_AUTO_MIGRATE="false")
    code, report = check(tmp_path, **env)
    assert code == 1 and "not migrated" in findings(report, ERROR, "store")[0]["message"]
    assert run(tmp_path, "migrate", **env).returncode == 0
    code, report = check(tmp_path, **env)
    assert code == 0 and "is current" in findings(report, OK, "store")[0]["message"], report


def test_a_plugin_that_stops_start_up_is_named_and_the_others_still_listed(migrated):
    pytest.importorskip("dolibarr_webhooks_email")
    env = dict(DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
               DOLIBARR_WEBHOOKS_EMAIL_HOST="smtp.example.com")
    # The application itself does not start with this configuration...
    crashed = run(migrated, "stats", **env)
    assert crashed.returncode != 0 and "DOLIBARR_WEBHOOKS_EMAIL_TO" in crashed.stderr
    # ...and check says why, and what works.
    code, report = check(migrated, **env)
    assert code == 1
    [error] = findings(report, ERROR, "plugins")
    assert error["setting"] == "DOLIBARR_WEBHOOKS_EMAIL_TO"
    assert error["message"].startswith("plugin email stops start-up: DOLIBARR_WEBHOOKS_EMAIL_TO: no recipients")
    assert {p["name"]: p["status"] for p in report["plugins"]}.get("log") == "enabled"


def test_a_disabled_plugin_says_why(migrated):
    pytest.importorskip("dolibarr_webhooks_email")
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC)
    email = [p for p in report["plugins"] if p["name"] == "email"][0]
    assert email["status"] == "disabled" and "DOLIBARR_WEBHOOKS_EMAIL_HOST is not set" in email["reason"]
    assert any(f["message"].startswith("plugin email ") and "DOLIBARR_WEBHOOKS_EMAIL_HOST" in f["message"]
               and f["message"].endswith("(not used? DOLIBARR_WEBHOOKS_BLOCK_PLUGINS=email leaves it out)")
               for f in findings(report, WARNING, "plugins"))
    # As it says: the plugin left out, check no longer warns of it.
    _code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                          DOLIBARR_WEBHOOKS_BLOCK_PLUGINS="email")
    assert not any("plugin email" in f["message"] for f in report["findings"])


@pytest.mark.parametrize("public_url", ["http://192.168.1.20:8080", "https://localhost", "http://127.0.0.1:8080"])
def test_a_local_url_is_a_warning_about_dolibarr_23(migrated, public_url):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=public_url)
    assert code == 0
    assert report["targets"] == [{"source": "default", "url": f"{public_url}/webhook/{SECRET}", "local": True}]
    assert any("$dolibarr_allow_localurl_for_webhooks = 1;" in f["message"]
               for f in findings(report, WARNING, "target"))


def test_no_public_url_is_guessed_and_said(migrated):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PORT="8181")
    assert code == 0
    assert report["targets"][0]["url"].endswith(f":8181/webhook/{SECRET}")
    assert any(f["setting"] == "DOLIBARR_WEBHOOKS_PUBLIC_URL" for f in findings(report, WARNING, "target"))


def test_sources_from_the_toml_file_each_get_a_url(migrated):
    other = "Hq4mT8vBn2XcZ6wLp9sRk3Jd7Fg"
    (migrated / "webhooks.toml").write_text(f'[sources.acme]\nsecret = "{other}"\n')
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                         DOLIBARR_WEBHOOKS_CONFIG=str(migrated / "webhooks.toml"))
    assert code == 0, report
    assert {t["source"]: t["url"] for t in report["targets"]} == {
        "default": f"{PUBLIC}/webhook/{SECRET}", "acme": f"{PUBLIC}/webhook/{other}"}


def test_rate_limit_storage(migrated):
    base = dict(DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                DOLIBARR_WEBHOOKS_RATELIMIT="600/minute")
    code, report = check(migrated, **base, DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL="redis://127.0.0.1:1")
    assert code == 1
    assert findings(report, ERROR, "rate limit")[0]["setting"] == "DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL"
    code, report = check(migrated, **base)
    assert code == 0
    assert "each gunicorn worker counts on its own" in findings(report, WARNING, "rate limit")[0]["message"]
    code, report = check(migrated, **{**base, "DOLIBARR_WEBHOOKS_RATELIMIT": "lots"})
    assert code == 1 and findings(report, ERROR, "rate limit")[0]["setting"] == "DOLIBARR_WEBHOOKS_RATELIMIT"


def test_rate_limit_with_redis(migrated):
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI: {exc}")
        pytest.skip(f"Redis not reachable: {exc}")
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                         DOLIBARR_WEBHOOKS_RATELIMIT="600/minute",
                         DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL="redis://127.0.0.1:6379")
    assert code == 0 and findings(report, OK, "rate limit"), report


def test_a_misspelt_variable_is_a_warning(migrated):
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                         DOLIBARR_WEBHOOKS_ALLOWED_IP="10.0.0.1")
    assert code == 0
    assert [f["setting"] for f in findings(report, WARNING, "settings")] == ["DOLIBARR_WEBHOOKS_ALLOWED_IP"]


@pytest.mark.parametrize("secret, level", [
    ("Zq8vN2kLw5RtY7uPx3aB9cDe4fGh", OK),
    ("q8vn2klw5rty7upx", WARNING),  # 16 random-looking lower-case characters: about 82 bits
    ("0123456789abcdef", ERROR),
    ("password-password", ERROR),
    ("short", ERROR),
])
def test_secret_strength(secret, level):
    assert secret_strength(secret)[0] == level


def test_check_says_where_each_setting_came_from(migrated):
    (migrated / ".env").write_text(f"DOLIBARR_WEBHOOKS_SECRET={SECRET}\nDOLIBARR_WEBHOOKS_PUBLIC_URL={PUBLIC}\n")
    code, report = check(migrated)  # the environment only names the database
    assert code == 0, report
    said = findings(report, OK, "settings")[0]["message"]
    assert said == "read from .env (2 settings), the environment (1 setting); the rest are defaults"
    # A file named by --env-file is where the settings came from, not a setting of the environment.
    (migrated / ".env").rename(migrated / "service.env")
    result = run(migrated, "--env-file", "service.env", "check", "--json")
    said = findings(json.loads(result.stdout), OK, "settings")[0]["message"]
    assert said == "read from service.env (2 settings), the environment (1 setting); the rest are defaults"


def test_check_names_each_setting_as_it_is_set(migrated):
    """A finding that names a setting names the variable to set: 'set METRICS_TOKEN' would be
    set as typed, and ignored."""
    _code, report = check(migrated, DOLIBARR_WEBHOOKS_INSECURE_NO_AUTH="1", DOLIBARR_WEBHOOKS_AUTO_MIGRATE="0",
                          DOLIBARR_WEBHOOKS_ALLOWED_IPS="10.0.0.0/8",
                          DOLIBARR_WEBHOOKS_PUBLIC_URL="http://hooks.example",
                          DOLIBARR_WEBHOOKS_DATABASE_URL=f"sqlite:///{migrated}/not-yet.sqlite3")
    bare = re.compile(r"(?<![A-Z_])(" + "|".join(sorted(SETTINGS, key=len, reverse=True)) + r")(?![A-Z_])")
    messages = [f["message"] for f in report["findings"]]
    assert len(messages) > 8 and any("DOLIBARR_WEBHOOKS_TRUSTED_PROXIES=1" in m for m in messages), messages
    assert [m for m in messages if bare.search(m)] == []


def test_check_describes_who_delivers_the_events(migrated):
    _code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET)
    worker = findings(report, topic="worker")[0]["message"]
    assert "'dolibarr-webhooks serve' delivers events itself" in worker and "dolibarr-webhooks worker" in worker
    _code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_EMBEDDED_WORKER="1")
    assert "each web process also delivers events" in findings(report, topic="worker")[0]["message"]


def test_a_plugin_warning_is_counted_once(migrated):
    # Slack on plain http works but warns: check reports it among the warnings, once.
    env = dict(DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
               DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL="http://127.0.0.1:9/services/T/B/X")
    code, report = check(migrated, **env)
    warned = [f["message"] for f in findings(report, WARNING, "plugins") if "plain http" in f["message"]]
    assert warned == ["plugin slack: DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL uses plain http; Slack's webhooks are https"]
    assert next(p for p in report["plugins"] if p["name"] == "slack")["warnings"]
    result = run(migrated, "check", **env)
    assert result.stdout.count("plain http") == 1 and "plain http" not in result.stderr


def test_plugin_credentials_are_masked_in_what_check_prints(migrated):
    # An API key pasted into the wrong variable: the plugin's error quotes the value it refuses.
    api_key = "Kc93hQ2mZ7xLw4Rv"
    code, report = check(migrated, DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_PUBLIC_URL=PUBLIC,
                         DOLIBARR_WEBHOOKS_SYNC_URL="https://erp-sync.example/hook",
                         DOLIBARR_WEBHOOKS_SYNC_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                         DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_URL="https://erp.example/api/index.php",
                         DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_KEY=api_key,
                         DOLIBARR_WEBHOOKS_SYNC_TIMEOUT=api_key)
    assert code == 1
    refused = [f["message"] for f in findings(report, ERROR, "plugins")]
    assert refused and "must be a number" in refused[0], report
    assert api_key not in json.dumps(report) and "***" in refused[0]
    assert "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" not in json.dumps(report)
