"""What the request path's store takes, and how long it may wait, on SQLite and PostgreSQL:
whatever Dolibarr sends is stored (no length limit on its text, NUL kept), a store error
says whether it was an outage, a duplicate keeps no copy of its body, and no write outlives
the request deadline."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import text

from dolibarr_webhooks.deadline import queued_for, request_deadline
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.store import (DATA, TIMEOUT, UNAVAILABLE, DeadlinePassed, Store, classify_error, libpq_url,
                                     payloads)
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET
from dolibarr_webhooks_testplugin import HeldFileLock, body, handler_config, writes_blocked

WEBHOOK = f"/webhook/{WEBHOOKS_TEST_SECRET}"


def store(app) -> Store:
    return app.extensions["dolibarr_webhooks"].store


def column(app, event_id: str, name: str):
    """One column of one event, read with plain SQL so nothing of the store's logic is trusted."""
    with store(app).engine.connect() as conn:
        return conn.execute(text(f"SELECT {name} FROM events WHERE id = :id"), {"id": event_id}).scalar()


def metric(client, name: str, **labels: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- whatever Dolibarr sends is stored ------------------------------------------------------------
def test_long_text_and_nul_are_stored_on_both_stores(make_app, tmp_path):
    """PostgreSQL answered 503 "store unavailable" to each of these; SQLite stored them."""
    app = make_app(handler_config(tmp_path, recorder=True), TRUSTED_PROXIES=1)
    client = app.test_client()
    long_ref, long_element, long_id = "FA" + "9" * 400, "e" * 300, "7" * 300
    nul = "before\x00after"
    cases = {
        "long ref": body(object_id=1, ref=long_ref),
        "long element and id": body(object_id=long_id, element=long_element),
        "long entity": body(object_id=2, entity="1" * 200),
        "NUL in the ref and deep in the object": body(object_id=3, ref=nul, lines=[{"desc": nul}]),
        "NUL in the id": body(object_id="4\x005"),
        "long trigger code": json.dumps({"triggercode": "MYMODULE_" + "X" * 300,
                                         "object": {"id": 6, "element": "mymodule"}}).encode(),
    }
    stored = {}
    for name, raw in cases.items():
        response = client.post(WEBHOOK, data=raw)
        assert response.status_code == 200, (name, response.get_json())
        stored[name] = response.get_json()["id"]
    forwarded = "203.0.113.9, " + ", ".join(f"2001:db8::{n:x}" for n in range(40))
    response = client.post(WEBHOOK, data=body(object_id=8), headers={"X-Forwarded-For": "x" * 300})
    assert response.status_code == 200, response.get_json()
    assert column(app, response.get_json()["id"], "remote_addr") == "x" * 300
    response = client.post(WEBHOOK, data=body(object_id=9), headers={"X-Forwarded-For": forwarded})
    assert response.status_code == 200, response.get_json()

    assert column(app, stored["long ref"], "ref") == long_ref
    assert column(app, stored["long element and id"], "element") == long_element
    assert column(app, stored["long element and id"], "object_id") == long_id
    assert column(app, stored["long trigger code"], "trigger_code") == "MYMODULE_" + "X" * 300
    # The searchable column spells NUL as JSON does; the event handlers get is exact.
    assert column(app, stored["NUL in the ref and deep in the object"], "ref") == "before\\u0000after"
    shown = store(app).show(stored["NUL in the ref and deep in the object"])
    assert shown["payload"]["ref"] == nul and shown["payload"]["object"]["lines"][0]["desc"] == nul
    assert store(app).show(stored["NUL in the id"])["payload"]["object_id"] == "4\x005"


def test_a_nul_body_posted_twice_is_one_duplicate(make_app, tmp_path):
    """Escaped columns still find the duplicate (the search compares the code and the id)."""
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    raw = body(object_id="1\x002", ref="a\x00b")
    first = client.post(WEBHOOK, data=raw).get_json()
    again = client.post(WEBHOOK, data=raw).get_json()
    assert first["status"] == "accepted" and again["status"] == "duplicate" and again["duplicate_of"] == first["id"]


def test_store_errors_are_classified_in_one_place():
    import sqlite3

    from sqlalchemy.exc import DataError, IntegrityError, OperationalError

    def wrapped(kind, orig):
        return kind("INSERT ...", {}, orig)

    assert classify_error(wrapped(OperationalError, sqlite3.OperationalError("database is locked"))) == TIMEOUT
    assert classify_error(wrapped(OperationalError, sqlite3.OperationalError("disk I/O error"))) == UNAVAILABLE
    assert classify_error(wrapped(OperationalError, sqlite3.OperationalError(
        "attempt to write a readonly database"))) == UNAVAILABLE
    assert classify_error(wrapped(IntegrityError, sqlite3.IntegrityError("CHECK constraint failed"))) == DATA
    assert classify_error(wrapped(DataError, ValueError("value too long"))) == DATA
    assert classify_error(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")) == DATA
    assert classify_error(DeadlinePassed("waiting")) == TIMEOUT
    assert classify_error(PermissionError(13, "Permission denied")) == UNAVAILABLE


def test_a_data_error_is_quarantined_and_counted_as_data(make_app, tmp_path):
    """A value the store refuses is not an outage: the raw body is kept (202), and the log and
    the metric say it was data. Refused here by a CHECK the test adds on both stores."""
    app = make_app(handler_config(tmp_path, recorder=True))
    if store(app).is_postgres:
        statements = ["ALTER TABLE events ADD CONSTRAINT no_refused CHECK (ref IS DISTINCT FROM 'REFUSED')"]
    else:  # SQLite cannot add a CHECK to a table: a trigger raises the same constraint error
        statements = ["CREATE TRIGGER no_refused BEFORE INSERT ON events WHEN NEW.ref = 'REFUSED' "
                      "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: no_refused'); END"]
    with store(app).engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    client = app.test_client()
    response = client.post(WEBHOOK, data=body(object_id=1, ref="REFUSED"))
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "quarantined"
    kept = store(app).quarantined(response.get_json()["id"])
    assert kept and json.loads(kept[0]["raw_body"])["object"]["ref"] == "REFUSED"
    assert metric(client, "dolibarr_webhooks_store_errors_total", operation="ingest", kind="data") == 1
    assert metric(client, "dolibarr_webhooks_store_errors_total", kind="unavailable") == 0


# -- duplicates keep no copy ---------------------------------------------------------------------
def test_a_duplicate_keeps_no_payload_and_show_points_to_the_original(make_app, tmp_path, webhooks_runner):
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    invoice = json.loads(sample_body("BILL_VALIDATE"))
    invoice["object"]["lines"] = invoice["object"]["lines"] * 50  # about 800 KB, as in the issue
    raw = json.dumps(invoice).encode()
    first = client.post(WEBHOOK, data=raw).get_json()
    copies = [client.post(WEBHOOK, data=raw).get_json() for _ in range(5)]
    assert {c["status"] for c in copies} == {"duplicate"} and {c["duplicate_of"] for c in copies} == {first["id"]}
    kept = column(app, first["id"], "payload")
    assert len(payloads.unpacked(kept)) > len(raw) / 2
    stored = len(kept)
    for copy in copies:
        assert column(app, copy["id"], "payload") is None
    with store(app).engine.connect() as conn:
        total = conn.execute(text("SELECT sum(length(payload)) FROM events")).scalar()
    assert total == stored, "the five copies added no payload"

    shown = store(app).show(copies[0]["id"])
    assert shown["status"] == "duplicate" and shown["duplicate_of"] == first["id"] and shown["payload"] is None
    from dolibarr_webhooks.cli import webhooks

    result = app.test_cli_runner().invoke(webhooks, ["show", copies[0]["id"]])
    assert result.exit_code == 0, result.output
    assert f"duplicate of {first['id']}" in result.output


# -- the request deadline -------------------------------------------------------------------------
def test_the_deadline_counts_the_wait_behind_the_proxy():
    now = time.time()
    assert queued_for(f"t={now - 3:.3f}", now) == pytest.approx(3, abs=0.01)
    assert queued_for(None, now) == 0 and queued_for("t=garbage", now) == 0 and queued_for("t=nan", now) == 0
    assert queued_for(f"t={now + 60:.3f}", now) == 0, "a clock ahead never lengthens the budget"
    started = time.perf_counter()
    assert request_deadline(10, started) - time.monotonic() == pytest.approx(10, abs=0.5)
    assert request_deadline(10, started, f"t={time.time() - 4:.3f}") - time.monotonic() == pytest.approx(6, abs=0.5)


def _assert_refused_in_time(app, client, deadline: float, object_id: int) -> None:
    started = time.monotonic()
    response = client.post(WEBHOOK, data=body(object_id=object_id))
    took = time.monotonic() - started
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"] == "store_timeout"
    assert response.headers["Retry-After"]
    assert took < deadline + 1.5, f"answered after {took:.1f} s; the deadline is {deadline} s"


def test_a_locked_store_is_answered_by_the_deadline_and_keeps_nothing(make_app, tmp_path, database_url):
    """SQLite's write lock held by another connection (BEGIN IMMEDIATE), PostgreSQL's events
    table locked (LOCK TABLE ... ACCESS EXCLUSIVE): 503 by the deadline, nothing stored."""
    app = make_app(handler_config(tmp_path, recorder=True), REQUEST_DEADLINE="1s")
    client = app.test_client()
    assert client.post(WEBHOOK, data=body(object_id=1)).status_code == 200
    if store(app).is_postgres:
        import psycopg

        holder = psycopg.connect(libpq_url(database_url))
        holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        try:
            _assert_refused_in_time(app, client, 1, 2)
        finally:
            holder.rollback()
            holder.close()
    else:
        with writes_blocked(database_url):
            _assert_refused_in_time(app, client, 1, 2)
    assert client.post(WEBHOOK, data=body(object_id=3)).status_code == 200
    assert store(app).stats()["events"] == 2, "the refused event is not stored"
    assert metric(client, "dolibarr_webhooks_store_errors_total", operation="ingest", kind="timeout") == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_sqlite_writers_queue_gives_up_at_the_deadline(make_app, tmp_path, database_url):
    """Another process's writer holds the queue's flock: the request stops waiting for it at
    its deadline, and the lock, once free, is taken again at once. In the main thread (sync
    workers) the wait is interrupted by an alarm; elsewhere it waits in a thread of its own."""
    app = make_app(handler_config(tmp_path, recorder=True), REQUEST_DEADLINE="1s")
    client = app.test_client()
    with HeldFileLock(database_url.removeprefix("sqlite:///") + ".lock"):
        _assert_refused_in_time(app, client, 1, 1)
        errors: list[BaseException] = []

        def in_a_thread():
            try:
                _assert_refused_in_time(app, client, 1, 2)
                _assert_refused_in_time(app, client, 1, 3)  # takes the previous request's wait over
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join()
        assert not errors, errors
    started = time.monotonic()
    assert client.post(WEBHOOK, data=body(object_id=3)).status_code == 200
    assert time.monotonic() - started < 1
    assert store(app).stats()["events"] == 1
    assert client.post(WEBHOOK, data=body(object_id=4)).status_code == 200, "the lock is not left held"


def test_the_timeouts_are_ordered_around_the_deadline():
    """deadline < gunicorn's timeout < nginx's proxy_read_timeout < Dolibarr's 30 s, in the
    files as shipped, and for serve whatever the deadline."""
    import re
    from pathlib import Path

    from dolibarr_webhooks.settings import DOLIBARR_TIMEOUT, SETTINGS, ConfigError, load_settings, parse_duration
    from dolibarr_webhooks.web.gunicorn import worker_timeout

    contrib = Path(__file__).resolve().parent.parent / "contrib"
    deadline = parse_duration(SETTINGS["REQUEST_DEADLINE"][0])
    gunicorn = int(re.search(r'GUNICORN_TIMEOUT"\) or (\d+)\)', (contrib / "gunicorn.conf.py").read_text()).group(1))
    nginx = (contrib / "nginx" / "dolibarr-webhooks.conf").read_text()
    proxy_read = parse_duration(re.search(r"^\s*proxy_read_timeout (\w+);", nginx, re.MULTILINE).group(1))
    assert deadline < gunicorn < proxy_read < DOLIBARR_TIMEOUT
    assert 'proxy_set_header X-Request-Start "t=${msec}";' in nginx
    for value in (1, 10, 25, 29.5):
        assert value < worker_timeout(value)
    for refused in ("0", "30s", "1m"):
        with pytest.raises(ConfigError, match="REQUEST_DEADLINE"):
            load_settings(environ={"DOLIBARR_WEBHOOKS_REQUEST_DEADLINE": refused}, env_file="")
    settings = load_settings(environ={"DOLIBARR_WEBHOOKS_REQUEST_DEADLINE": "2500ms"}, env_file="")
    assert settings["REQUEST_DEADLINE"] == 2.5
