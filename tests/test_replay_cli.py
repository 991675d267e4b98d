"""The operator's commands: ``stats``, ``deliveries``, ``show``, ``replay``, ``purge``, each with
``--json``, through Flask's CLI runner and through the real ``dolibarr-webhooks`` console script.

Every test runs on SQLite and on PostgreSQL (the ``database_url`` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dolibarr_webhooks.cli.group import shortened
from dolibarr_webhooks.store import DELIVERY_STATES
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET
from dolibarr_webhooks_testplugin import (body, by_plugin, command, handler_config, handler_env,
                                          read_records)

WEBHOOK = f"/webhook/{WEBHOOKS_TEST_SECRET}"


@pytest.fixture
def scenario(make_app, tmp_path, deliver):
    """Three events: a third party (delivered everywhere) and two invoices that the failer
    (``BILL_*`` only) never manages to handle, so their failer deliveries are dead."""
    handlers = handler_config(tmp_path, recorder=True) | {"failer": {"mode": "always", "events": ["BILL_*"]}}
    app = make_app(handlers, RETRY_SCHEDULE="0.1s")
    client = app.test_client()
    ids = {code: client.post(WEBHOOK, data=body(code, object_id=n)).get_json()["id"]
           for n, code in enumerate(["COMPANY_CREATE", "BILL_PAYED", "BILL_VALIDATE"])}
    deliver(app, idle=0.5)
    return app, ids


def test_stats_json_shape(scenario):
    app, _ids = scenario
    stats = command(app, "stats", "--json")
    assert stats["events"] == 3 and stats["duplicates"] == 0 and stats["quarantined"] == 0
    assert stats["deliveries"] == {"pending": 0, "running": 0, "delivered": 6, "failed": 0, "dead": 2}
    assert stats["plugins"]["failer"] == {"pending": 0, "running": 0, "delivered": 0, "failed": 0, "dead": 2}
    assert stats["plugins"]["recorder"]["delivered"] == stats["plugins"]["log"]["delivered"] == 3
    assert stats["oldest_pending_age"] is None and stats["duplicate_runs"] == 0 and stats["late_results"] == 0
    text = command(app, "stats")
    assert "events: 3" in text and "dead 2" in text and "oldest pending: none" in text


def test_deliveries_filters(scenario):
    app, ids = scenario
    dead = command(app, "deliveries", "--status", "dead", "--json")
    assert sorted((r["event_id"], r["plugin"], r["trigger_code"]) for r in dead) == sorted(
        [(ids["BILL_PAYED"], "failer", "BILL_PAYED"), (ids["BILL_VALIDATE"], "failer", "BILL_VALIDATE")])
    assert all(r["attempts"] == 2 and r["last_error"].startswith("RuntimeError: ") for r in dead)
    assert {r["event_id"] for r in command(app, "deliveries", "--plugin", "recorder", "--json")} == set(ids.values())
    for limit in ("0", "-1"):  # PostgreSQL refused a negative LIMIT; SQLite took it for none
        assert "Invalid value for '--limit'" in command(app, "deliveries", "--limit", limit, exit_code=2)
    paid = command(app, "deliveries", "--code", "bill_payed", "--json")
    assert sorted(r["plugin"] for r in paid) == ["failer", "log", "recorder"]
    assert {r["event_id"] for r in paid} == {ids["BILL_PAYED"]}
    assert len(command(app, "deliveries", "--since", "1h", "--json")) == 8
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert command(app, "deliveries", "--since", tomorrow, "--json") == []
    assert len(command(app, "deliveries", "--limit", "2", "--json")) == 2
    assert "is neither a duration" in command(app, "deliveries", "--since", "last week", exit_code=2)
    text = command(app, "deliveries", "--status", "dead")
    assert "BILL_PAYED" in text and "failer" in text and "COMPANY_CREATE" not in text
    # The error as the table shows it: whole up to 100 characters (an endpoint's URL and its
    # answer fit), then cut with a mark; 'show' has it whole.
    error = dead[0]["last_error"]
    assert (error in text) if len(error) <= 100 else (error[:97] + "..." in text)
    assert shortened("x" * 101, 100) == "x" * 97 + "..." and shortened("x" * 100, 100) == "x" * 100


def test_show(scenario):
    app, ids = scenario
    shown = command(app, "show", ids["BILL_PAYED"], "--json")
    assert shown["id"] == ids["BILL_PAYED"] and shown["trigger_code"] == "BILL_PAYED"
    assert shown["status"] == "accepted" and shown["payload"]["object"]["id"] == 1
    failer = next(d for d in shown["deliveries"] if d["plugin"] == "failer")
    assert failer["status"] == "dead" and [a["outcome"] for a in failer["attempts_log"]] == ["failed", "dead"]
    assert "lease_token" not in failer
    text = command(app, "show", ids["BILL_PAYED"])
    assert "failer: dead, 2 attempts" in text and "recorder: delivered, 1 attempt" in text
    assert "1 attempts" not in text and "run 1" not in text  # one run: numbers alone are unambiguous
    assert "no event evt_missing" in command(app, "show", "evt_missing", exit_code=1)


def test_show_after_a_replay_numbers_attempts_per_run(scenario, deliver):
    app, ids = scenario
    assert command(app, "replay", ids["BILL_PAYED"], "--plugin", "recorder").strip() == "1 delivery scheduled again"
    deliver(app, idle=0.5)
    text = command(app, "show", ids["BILL_PAYED"])
    assert "recorder: delivered, 1 attempt in run 2 (2 attempts in all)" in text
    recorder = text.split("- recorder:")[1]
    assert "run 1 #1 " in recorder and "run 2 #1 " in recorder
    shown = command(app, "show", ids["BILL_PAYED"], "--json")
    attempts = next(d for d in shown["deliveries"] if d["plugin"] == "recorder")["attempts_log"]
    assert [(a["run"], a["number"]) for a in attempts] == [(1, 1), (2, 1)]


def test_replay_forms(scenario, deliver, tmp_path):
    app, ids = scenario
    assert "give an EVENT_ID, --dead, --failed or --since" in command(app, "replay", exit_code=2)
    assert command(app, "replay", "--failed", "--json") == {"replayed": 0}
    assert command(app, "replay", "--dead", "--plugin", "recorder", "--json") == {"replayed": 0}
    # --since without a status takes every delivery of those events; --plugin narrows it.
    assert command(app, "replay", "--since", "1h", "--plugin", "failer", "--json") == {"replayed": 2}
    pending = command(app, "deliveries", "--status", "pending", "--json")
    assert sorted(r["event_id"] for r in pending) == sorted([ids["BILL_PAYED"], ids["BILL_VALIDATE"]])
    assert {(r["plugin"], r["attempts"], r["last_error"]) for r in pending} == {("failer", 0, None)}
    deliver(app, idle=0.5)
    assert command(app, "stats", "--json")["deliveries"]["dead"] == 2  # still failing: dead again
    assert command(app, "replay", "--dead", "--json") == {"replayed": 2}
    # One event, every plugin, whatever its state: the event is handled again from scratch.
    assert command(app, "replay", ids["COMPANY_CREATE"], "--json") == {"replayed": 2}
    deliver(app, idle=0.5)
    records = read_records(tmp_path / "recorder.jsonl")
    assert sorted(r["event"] for r in records) == sorted([*ids.values(), ids["COMPANY_CREATE"]])
    assert command(app, "replay", "evt_missing", "--json") == {"replayed": 0}
    assert command(app, "replay", "evt_missing").strip() == "0 deliveries scheduled again"


def test_replay_creates_the_delivery_of_a_plugin_added_later(scenario, make_app, tmp_path, deliver):
    app, ids = scenario
    # The sleeper is turned on after the events arrived: no delivery exists for it yet.
    later = make_app(handler_config(tmp_path, recorder=True, sleeper=0))
    assert "sleeper" not in by_plugin(later, ids["COMPANY_CREATE"])
    assert command(later, "replay", ids["COMPANY_CREATE"], "--plugin", "sleeper", "--json") == {"replayed": 1}
    assert command(later, "replay", ids["COMPANY_CREATE"], "--plugin", "sleeper", "--json") == {"replayed": 1}
    deliver(later, idle=0.5)
    got = by_plugin(later, ids["COMPANY_CREATE"])
    assert got["sleeper"]["status"] == "delivered" and got["recorder"]["attempts"] == 1
    assert [r["at"] for r in read_records(tmp_path / "sleeper.jsonl")] == ["start", "end"]


def test_a_replay_for_a_plugin_that_does_not_exist_is_refused(scenario):
    """A typo made a delivery no worker would ever claim: pending for ever, its age alerting."""
    app, ids = scenario
    before = by_plugin(app, ids["COMPANY_CREATE"])
    refused = command(app, "replay", ids["COMPANY_CREATE"], "--plugin", "recorderr", exit_code=2)
    assert "no plugin named 'recorderr'" in refused
    assert "(the plugins that handle events: failer, log, recorder)" in refused
    assert "no plugin named 'recorderr'" in command(app, "replay", "--dead", "--plugin", "recorderr", exit_code=2)
    assert by_plugin(app, ids["COMPANY_CREATE"]) == before


def test_purge_command(scenario):
    app, ids = scenario
    assert command(app, "purge", "--older-than", "30d", "--json") == {"purged": 0}
    assert "0 events purged" in command(app, "purge", "--older-than", "30d")
    assert "is not a duration" in command(app, "purge", "--older-than", "a while", exit_code=2)
    assert command(app, "purge", "--older-than", "0s", "--json") == {"purged": 1}  # the one delivered everywhere
    assert command(app, "show", ids["COMPANY_CREATE"], exit_code=1)
    assert command(app, "purge", "--older-than", "0s", "--include-unfinished", "--json") == {"purged": 2}
    assert command(app, "stats", "--json")["events"] == 0


@pytest.mark.slow
def test_the_console_script(database_url, tmp_path, make_app):
    """The installed ``dolibarr-webhooks`` command, configured by the environment as an operator's
    shell or a cron job would be."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    env.update({"DOLIBARR_WEBHOOKS_SECRET": WEBHOOKS_TEST_SECRET, "DOLIBARR_WEBHOOKS_DATABASE_URL": database_url,
                "DOLIBARR_WEBHOOKS_RETRY_JITTER": "0", "DOLIBARR_WEBHOOKS_RETRY_SCHEDULE": "0.1s"},
               **handler_env(handler_config(tmp_path, recorder=True, failer="times:2")))
    script = Path(sys.executable).parent / "dolibarr-webhooks"

    def console(*args: str, exit_code: int = 0):
        done = subprocess.run([str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == exit_code, done.stdout + done.stderr
        return json.loads(done.stdout) if "--json" in args else done.stdout + done.stderr

    if database_url.startswith("sqlite"):
        # Run in the wrong folder, a reading command says so instead of creating an empty store.
        assert "no store at" in console("stats", exit_code=1)
        assert not list(tmp_path.glob("*.sqlite3*"))
        console("migrate")
    assert console("stats", "--json")["deliveries"] == {state: 0 for state in DELIVERY_STATES}
    # The event comes in through an app on the same database, as the web process would store it.
    web = make_app(handler_config(tmp_path, recorder=True, failer="times:2"))
    event_id = web.test_client().post(WEBHOOK, data=body("BILL_PAYED", object_id=5)).get_json()["id"]
    console("worker", "--until-idle", "0.5")  # failer: two failed attempts, then dead
    assert console("deliveries", "--status", "dead", "--json")[0]["event_id"] == event_id
    assert console("stats", "--json")["deliveries"]["dead"] == 1
    assert console("replay", "--dead", "--json") == {"replayed": 1}
    console("worker", "--until-idle", "0.5")  # the third attempt succeeds
    shown = console("show", event_id, "--json")
    assert {d["plugin"]: d["status"] for d in shown["deliveries"]} == {
        "failer": "delivered", "recorder": "delivered", "log": "delivered"}
    assert [r["event"] for r in read_records(tmp_path / "recorder.jsonl")] == [event_id]
    assert console("purge", "--older-than", "30d", "--json") == {"purged": 0}
    assert "no event evt_missing" in console("show", "evt_missing", exit_code=1)
