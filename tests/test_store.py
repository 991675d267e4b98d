"""The durable inbox: an event and one delivery per plugin written in one transaction, a 503
(and nothing half-written) when the store cannot write, quarantined bodies kept and
re-processed, duplicates answered but not dispatched, retention, schema migrations.

Every test runs on SQLite and on PostgreSQL (the ``database_url`` fixture), except the few
that break one backend in its own way: those pick it with indirect parametrization, so
neither is ever skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, text, update

from dolibarr_webhooks.ids import new_event_id
from dolibarr_webhooks.pipeline.parse import event_from_body
from dolibarr_webhooks.store import NOTIFY_CHANNEL, SCHEMA_VERSION, Store, compiled, gauges, normalise_url, queue
from dolibarr_webhooks.store.schema import FAILED, deliveries
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET, deliver_until_idle, make_event, wait_for
from dolibarr_webhooks_testplugin import (HeldFileLock, body, by_plugin, command, files_open, handler_config,
                                          read_records, running_worker, writes_blocked)
from postgres_helpers import admin_connection, database_name, drop_database, end_sessions

WEBHOOK = f"/webhook/{WEBHOOKS_TEST_SECRET}"


def store(app):
    return app.extensions["dolibarr_webhooks"].store


def counts(app) -> dict[str, int]:
    """Rows in each table, read with plain SQL so nothing of the store's logic is trusted."""
    with store(app).engine.connect() as conn:
        return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                for table in ("events", "deliveries", "attempts")}


def execute(app, *statements: str) -> None:
    with store(app).engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


# -- one transaction ---------------------------------------------------------------------------
def test_event_and_one_delivery_per_plugin_are_stored_together(make_app, tmp_path):
    app = make_app(handler_config(tmp_path, recorder=True, failer="always") |
                   {"sleeper": {"seconds": 0, "events": ["BILL_*"]}})
    response = app.test_client().post(WEBHOOK, data=body("COMPANY_CREATE", object_id=7))
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["status"] == "accepted" and answer["deliveries"] == 3
    shown = store(app).show(answer["id"])
    assert shown["status"] == "accepted" and shown["trigger_code"] == "COMPANY_CREATE"
    assert shown["object_id"] == "7" and shown["payload"]["object"]["id"] == 7
    # One delivery per plugin that handles the code (the sleeper only takes BILL_*), none run yet.
    deliveries = by_plugin(app, answer["id"])
    assert sorted(deliveries) == ["failer", "log", "recorder"]
    assert {d["status"] for d in deliveries.values()} == {"pending"}
    assert {d["attempts"] for d in deliveries.values()} == {0}
    assert counts(app) == {"events": 1, "deliveries": 3, "attempts": 0}

    answer = app.test_client().post(WEBHOOK, data=body("BILL_PAYED", object_id=8)).get_json()
    assert sorted(by_plugin(app, answer["id"])) == ["failer", "log", "recorder", "sleeper"]


REFUSE_FAILER = {
    "sqlite": ["CREATE TRIGGER refuse_failer BEFORE INSERT ON deliveries WHEN NEW.plugin = 'failer' "
               "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
    "postgresql": ["CREATE FUNCTION refuse_failer() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "IF NEW.plugin = 'failer' THEN RAISE EXCEPTION 'refused by the test' "
                   "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$",
                   "CREATE TRIGGER refuse_failer BEFORE INSERT ON deliveries FOR EACH ROW "
                   "EXECUTE FUNCTION refuse_failer()"],
}


def test_a_delivery_that_cannot_be_written_leaves_no_event_behind(make_app, tmp_path):
    """The database itself refuses one delivery row (a trigger's constraint): the event row
    written just before it in the same request must not survive. A refusal of the data is
    not an outage: the raw body is quarantined (202), as an unparseable one would be."""
    app = make_app(handler_config(tmp_path, recorder=True, failer="always"))
    dialect = store(app).engine.dialect.name
    execute(app, *REFUSE_FAILER[dialect])
    client = app.test_client()
    response = client.post(WEBHOOK, data=body(object_id=1))
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "quarantined"
    assert "the store refused the event (" in response.get_json()["warning"]
    assert counts(app) == {"events": 1, "deliveries": 0, "attempts": 0}
    assert store(app).stats()["events"] == 0 and store(app).stats()["quarantined"] == 1

    execute(app, "DROP TRIGGER refuse_failer" + (" ON deliveries" if dialect == "postgresql" else ""))
    response = client.post(WEBHOOK, data=body(object_id=1))  # Dolibarr's user tries again: not a duplicate
    assert response.status_code == 200 and response.get_json()["status"] == "accepted"
    assert counts(app) == {"events": 2, "deliveries": 3, "attempts": 0}  # with the quarantined body


# -- the store cannot write --------------------------------------------------------------------
@contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE for this process: SQLite's next write past ``limit`` bytes fails as on a full
    disk (Python ignores SIGXFSZ, so write() returns EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_disk_full_answers_503_and_keeps_nothing_half_written(make_app, tmp_path):
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    assert client.post(WEBHOOK, data=body(object_id=1)).status_code == 200
    before = counts(app)
    largest = max(p.stat().st_size for p in tmp_path.glob("webhooks.sqlite3*"))
    # More than the room left below, compressed or not (random text: lz4 hardly shrinks it).
    big = body(object_id=2, note_private=random.Random(2).randbytes(2_250_000).hex())
    with file_size_limit(largest + 1_000_000):
        response = client.post(WEBHOOK, data=big)
    assert response.status_code == 503, response.get_json()
    assert counts(app) == before
    # Room again: the same event is stored, and the store is consistent.
    response = client.post(WEBHOOK, data=big)
    assert response.status_code == 200 and response.get_json()["status"] == "accepted"
    assert counts(app) == {"events": 2, "deliveries": 4, "attempts": 0}
    with store(app).engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_disposed_of_store_leaves_nothing_of_its_files_open(make_app, tmp_path):
    """``Store.dispose`` lets go of all the store opened in this process: its connections, the
    writers' lock and its waiting thread, the shared fsync counters. A command or a test makes
    a store for a while; Python 3.13 warns of an SQLite connection left to the garbage
    collector, and a descriptor of the lock file was never closed at all."""
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    assert client.post(WEBHOOK, data=body(object_id=1)).status_code == 200
    # A turn that waits for another writer: the writers' waiting thread starts.
    threads_before = set(threading.enumerate())
    with HeldFileLock(str(tmp_path / "webhooks.sqlite3.lock")):
        posted = threading.Thread(target=client.post, args=(WEBHOOK,), kwargs={"data": body(object_id=2)})
        posted.start()
        time.sleep(0.2)
    posted.join(5)
    deliver_until_idle(app)
    assert counts(app)["events"] == 2
    assert files_open(tmp_path / "webhooks.sqlite3.lock") and files_open(tmp_path / "webhooks.sqlite3-wal")
    store(app).dispose()
    wait_for(lambda: not set(threading.enumerate()) - threads_before, timeout=5)
    assert files_open(tmp_path / "webhooks.sqlite3") == []
    # Still usable: what it needs is opened again.
    assert client.post(WEBHOOK, data=body(object_id=3)).status_code == 200


@contextlib.contextmanager
def lost_once_lent(store_: Store):
    """The next connection ``store_``'s pool lends is ended by the server right after: its
    first statement meets a lost connection, which no look at the checkout could have seen."""
    pending = [True]

    def cut(dbapi_conn, _record, _proxy):
        if pending:
            pending.clear()
            with admin_connection() as conn:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", (dbapi_conn.info.backend_pid,))

    sa_event.listen(store_.engine, "checkout", cut)
    try:
        yield
    finally:
        sa_event.remove(store_.engine, "checkout", cut)
        assert not pending, "no connection was lent"


def test_a_failure_whose_text_holds_a_nul_or_a_lone_surrogate_is_recorded(migrated_store):
    """A plugin's failure may quote a remote's answer, NUL bytes included, or a forged body's
    field, a lone surrogate included. PostgreSQL's text cannot hold a NUL, and neither store
    can encode a lone surrogate: the outcome's statements failed, the lane's thread died, and
    the delivery stayed running until its lease expired, to fail the same way again, never
    retried nor dead. Both are kept as JSON writes them, as in the searchable columns."""
    from dolibarr_webhooks.store import DELIVERED

    store_ = migrated_store
    store_.ingest(event_from_body(body(object_id=5)), ["log"])
    claim = store_.claim({"log": 1}, "test", lease=30)[0]
    assert store_.finish(claim, FAILED, "RuntimeError: the remote answered b'\x00\x01' about x\ud800y",
                         time.time() - 1, "test")
    with store_.engine.connect() as conn:
        row = conn.execute(select(deliveries.c.status, deliveries.c.last_error)).one()
    assert row.status == FAILED
    assert row.last_error == "RuntimeError: the remote answered b'\\u0000\x01' about x\\ud800y"
    again = store_.claim({"log": 1}, "test", lease=30)[0]
    assert store_.finish(again, DELIVERED, None, None, "test")


@contextlib.contextmanager
def worker_store_over(database_url: str, events: int, plugins: tuple[str, ...] = ("log",)):
    """A store with ``events`` events, each with a delivery for every one of ``plugins``, and
    a worker's store on it (``Store.for_worker``)."""
    admin = Store(database_url)
    admin.migrate()
    for number in range(1, events + 1):
        admin.ingest(event_from_body(body(object_id=number)), list(plugins))
    worker_store = Store.for_worker(database_url)
    try:
        yield worker_store
    finally:
        worker_store.dispose()
        admin.dispose()


@contextlib.contextmanager
def worker_with_a_claim(database_url: str, events: int):
    """``worker_store_over`` for plugin ``log``, its worker's store holding the claim of the first."""
    with worker_store_over(database_url, events) as worker_store:
        yield worker_store, worker_store.claim({"log": 1}, "test", lease=30)[0]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_worker_statement_that_meets_a_lost_connection_fails_once(database_url):
    """The worker's claims and outcomes run on the driver's cursor (store.postgres_fast): a
    connection the server closes once lent (a restart, a failover) fails the statement as an
    OperationalError, as SQLAlchemy's execution did, and is not lent again: the next call,
    at once, gets a new connection."""
    from sqlalchemy.exc import OperationalError

    from dolibarr_webhooks.store import DELIVERED

    with worker_with_a_claim(database_url, 2) as (worker_store, claim):
        with lost_once_lent(worker_store), pytest.raises(OperationalError):
            worker_store.finish(claim, DELIVERED, None, None, "test")
        second = worker_store.claim({"log": 1}, "test", lease=30)
        assert [c.event.object_id for c in second] == ["2"]
        # The same in a lane's pipelined outcome and claim (postgres_fast.pipeline).
        with lost_once_lent(worker_store), pytest.raises(OperationalError):
            worker_store.finish_and_claim(second[0], DELIVERED, None, None, "test", lease=30)
        assert worker_store.finish(second[0], DELIVERED, None, None, "test")


@contextlib.contextmanager
def round_trips(engine, trace_path: Path):
    """What the client sends on the connections ``engine`` lends in the block, from libpq's
    trace: ``.waits``, every Query or Sync message (a round trip each), filled once the block
    ends, and ``.connections``, how many connections were lent."""
    from types import SimpleNamespace

    from psycopg.pq import Trace

    counted = SimpleNamespace(waits=[], connections=0)
    traced = []

    def trace(dbapi_connection, _record, _proxy):
        dbapi_connection.pgconn.trace(trace_file.fileno())
        dbapi_connection.pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        traced.append(dbapi_connection)

    with open(trace_path, "w") as trace_file:
        sa_event.listen(engine, "checkout", trace)
        try:
            yield counted
        finally:
            sa_event.remove(engine, "checkout", trace)
            for connection in traced:
                if not connection.closed:
                    connection.pgconn.untrace()
    sent = [line.split("\t") for line in trace_path.read_text().splitlines() if line.startswith("F\t")]
    counted.waits.extend(fields[2] for fields in sent if fields[2] in ("Query", "Sync"))
    counted.connections = len(traced)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_lane_outcome_and_its_next_claim_take_two_round_trips(database_url, tmp_path):
    """``finish_and_claim`` on PostgreSQL, in psycopg's pipeline mode: BEGIN, the outcome and
    the next claim in one round trip, the attempt, the lease and COMMIT in another: two, where
    each statement waiting for its answer made six (and psycopg's own BEGIN, waited for, made
    four). The connection goes back to the pool out of autocommit."""
    from dolibarr_webhooks.store import DELIVERED

    with worker_with_a_claim(database_url, 2) as (worker_store, claim):
        with round_trips(worker_store.engine, tmp_path / "libpq.trace") as sent:
            held, following = worker_store.finish_and_claim(claim, DELIVERED, None, None, "test", lease=30)
        assert_pooled_connection_in_transactions(worker_store)
        shown = worker_store.show(claim.event.id)
    assert held and following is not None and following.event.object_id == "2"
    assert len(sent.waits) <= 2, f"{len(sent.waits)} round trips: {sent.waits}"
    assert shown["deliveries"][0]["status"] == DELIVERED and shown["deliveries"][0]["attempts"] == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_claim_for_several_plugins_takes_two_round_trips(database_url, tmp_path):
    """A worker's claim reads what is due for each plugin, then leases it: BEGIN and every
    plugin's read in one round trip, the leases and COMMIT in another, where each statement
    waiting for its answer made two a plugin and two more (eight for three plugins)."""
    with worker_store_over(database_url, 2, ("email", "slack", "sync")) as worker_store:
        with round_trips(worker_store.engine, tmp_path / "libpq.trace") as sent:
            claims = worker_store.claim({"email": 2, "slack": 1, "sync": 0}, "test", lease=30)
        assert_pooled_connection_in_transactions(worker_store)
    assert sorted((c.plugin, c.event.object_id) for c in claims) == [("email", "1"), ("email", "2"), ("slack", "1")]
    assert len(sent.waits) <= 2, f"{len(sent.waits)} round trips: {sent.waits}"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_read_takes_one_round_trip(database_url, tmp_path):
    """The worker's look for due deliveries, and every read of the store, is its statement
    alone: in a transaction psycopg sent BEGIN and waited for it, and the pool a ROLLBACK
    when the connection came back (three round trips). The connection goes back to the pool
    out of autocommit."""
    with worker_store_over(database_url, 1) as worker_store:
        with round_trips(worker_store.engine, tmp_path / "libpq.trace") as sent:
            assert worker_store.has_due(["log"])
        assert_pooled_connection_in_transactions(worker_store)
        assert worker_store.claim({"log": 1}, "test", lease=30)  # a write is still a transaction
    assert len(sent.waits) == 1, f"{len(sent.waits)} round trips: {sent.waits}"


def assert_pooled_connection_in_transactions(store_) -> None:
    """The store's one pooled connection runs its statements in transactions: the pipeline's
    autocommit (postgres_fast.pipeline) did not stay on it."""
    assert store_.engine.pool.checkedin() == 1
    connection = store_.engine.raw_connection()
    try:
        assert connection.driver_connection.autocommit is False
    finally:
        connection.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_error_in_a_lanes_pipelined_statements_is_raised_as_sqlalchemy_raises_it(database_url):
    """A statement of the pipeline that the server refuses (here the attempt's worker name,
    longer than its column) fails the whole transaction with SQLAlchemy's DataError, which
    ``classify_error`` reads as bad data, not an outage: nothing of it is kept, and the
    connection goes back to the pool out of autocommit."""
    from sqlalchemy.exc import DataError

    from dolibarr_webhooks.store import DELIVERED, RUNNING
    from dolibarr_webhooks.store.failures import DATA, classify_error

    with worker_with_a_claim(database_url, 1) as (worker_store, claim):
        with pytest.raises(DataError) as refused:
            worker_store.finish_and_claim(claim, DELIVERED, None, None, "w" * 200, lease=30)
        assert classify_error(refused.value) == DATA
        assert_pooled_connection_in_transactions(worker_store)
        assert worker_store.show(claim.event.id)["deliveries"][0]["status"] == RUNNING
        assert worker_store.finish(claim, DELIVERED, None, None, "test")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_read_only_or_dropped_answers_503(make_app, tmp_path, database_url):
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    assert client.post(WEBHOOK, data=body(object_id=1)).status_code == 200
    before = counts(app)

    name = database_name(database_url)
    with admin_connection() as conn:
        # A failover to a read-only standby looks like this: every new session is read-only.
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        end_sessions(conn, name)
        response = client.post(WEBHOOK, data=body(object_id=2))
        assert response.status_code == 503
        # Reads still work: /ready must say what a write meets.
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json["checks"]["store"] is True, ready.json
        assert "read-only" in ready.json["problems"]["writes"]
        conn.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        end_sessions(conn, name)
        assert counts(app) == before
        response = client.post(WEBHOOK, data=body(object_id=2))
        assert response.status_code == 200, response.get_json()
        # The database goes away altogether.
        drop_database(name, if_exists=False)
    response = client.post(WEBHOOK, data=body(object_id=3))
    assert response.status_code == 503
    assert client.get("/ready").status_code == 503


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_worker_store_replaces_a_connection_the_server_closed_without_a_round_trip(database_url):
    """The pool's pre-ping was a round trip at every checkout: one in five of a delivery's round
    trips for the worker, whose claim and outcome are a transaction each (issue #15). A
    worker's store (``Store.for_worker``) looks at the socket of the connection it lends
    instead (``engine.closed_by_server``): one the server closed is replaced before a
    statement meets it, without a ping. The service's store keeps the pre-ping, so /ready
    never meets a connection lost a moment ago
    (test_postgresql_read_only_or_dropped_answers_503)."""
    name = database_name(database_url)
    service_store, worker_store = Store(database_url), Store.for_worker(database_url)
    pings = []
    original_ping = worker_store.engine.dialect.do_ping
    worker_store.engine.dialect.do_ping = lambda dbapi_conn: pings.append(1) or original_ping(dbapi_conn)
    try:
        for _ in range(5):
            assert worker_store.ping() and service_store.ping()
        with admin_connection() as conn:
            end_sessions(conn, name)
        assert worker_store.ping() and service_store.ping()  # each replaced before its statement
        time.sleep(1.2)  # a quiet second: no ping either
        assert worker_store.ping()
        assert pings == []
    finally:
        worker_store.engine.dialect.do_ping = original_ping
        service_store.dispose()
        worker_store.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_ingest_replaces_a_connection_the_server_closed_without_a_round_trip(database_url, tmp_path):
    """The ingest's connection (``PostgresCommitter``'s own) was checked with a ``SELECT 1``
    before the first request of every quiet second: with PostgreSQL on another host, a round
    trip of a Dolibarr user's wait, at almost every event of a quiet shop. It is checked by a
    look at its socket now: one the server closed is replaced before a request meets it, and
    every request sends its call and nothing else, on either connection."""
    name = database_name(database_url)
    store_ = Store(database_url)
    store_.migrate()
    try:
        with round_trips(store_.request_engine, tmp_path / "libpq.trace") as sent:
            assert store_.ingest(event_from_body(body(object_id=1)), ["log"]).status == "accepted"
            with admin_connection() as conn:
                end_sessions(conn, name)
            assert store_.ingest(event_from_body(body(object_id=2)), ["log"]).status == "accepted"
            time.sleep(1.2)
            assert store_.ingest(event_from_body(body(object_id=3)), ["log"]).status == "accepted"
    finally:
        store_.dispose()
    assert sent.connections == 2 and len(sent.waits) == 3, f"{sent.connections} connections, {sent.waits}"


# -- claims --------------------------------------------------------------------------------------
def test_a_claim_that_waited_for_a_lock_still_gets_its_whole_lease(make_app, tmp_path, database_url):
    """Under write contention a claim can wait for the lock; its lease must count from when it
    got the delivery, or a live worker loses it to another and the event runs twice."""
    app = make_app(handler_config(tmp_path, recorder=True))
    event_id = app.test_client().post(WEBHOOK, data=body(object_id=1)).get_json()["id"]
    claims = []
    with writes_blocked(database_url) as released:
        thread = threading.Thread(target=lambda: claims.extend(store(app).claim({"recorder": 1}, "test", lease=1.0)))
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive()  # waiting for the lock
    thread.join(30)
    (claim,) = claims
    held = by_plugin(app, event_id)["recorder"]
    assert held["status"] == "running"
    assert held["lease_expires_at"] >= released["at"] + 1.0 - 0.05, held["lease_expires_at"] - released["at"]
    assert claim.started_at >= released["at"] - 0.05


# -- quarantine --------------------------------------------------------------------------------
def test_quarantined_bodies_are_kept_and_reprocessed(make_app, tmp_path, deliver):
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    # Dolibarr posts an empty body when json_encode fails; a truncated body is another case.
    empty = client.post(WEBHOOK, data=b"")
    truncated_body = body(object_id=1)[:200]
    truncated = client.post(WEBHOOK, data=truncated_body)
    for response in (empty, truncated):
        assert response.status_code == 202 and response.get_json()["status"] == "quarantined"
    empty_id, truncated_id = empty.get_json()["id"], truncated.get_json()["id"]
    shown = store(app).show(truncated_id)
    assert shown["status"] == "quarantined" and shown["raw_body_size"] == len(truncated_body)
    assert shown["body_sha256"] == hashlib.sha256(truncated_body).hexdigest()
    assert shown["deliveries"] == []
    assert store(app).show(empty_id)["raw_body_size"] == 0
    assert store(app).stats()["quarantined"] == 2

    # A body an earlier version quarantined, which this version parses (stored as that version did).
    fixed_body = body(object_id=2)
    fixed_id = new_event_id()
    store(app).quarantine(fixed_id, fixed_body, "default", "refused by an older parser",
                          hashlib.sha256(fixed_body).hexdigest(), time.time() - 60)

    results = {r["id"]: r["result"] for r in command(app, "reprocess", "--json")}
    assert results[empty_id] == "still unparseable: empty body"
    assert results[truncated_id].startswith("still unparseable: body is not valid JSON")
    assert results[fixed_id] == "accepted as COMPANY_CREATE, 2 deliveries"
    deliver(app)
    shown = store(app).show(fixed_id)
    assert shown["status"] == "accepted" and shown["payload"]["object"]["id"] == 2
    assert {d["plugin"]: d["status"] for d in shown["deliveries"]} == {"recorder": "delivered", "log": "delivered"}
    assert [r["event"] for r in read_records(tmp_path / "recorder.jsonl")] == [fixed_id]  # same id as received

    # The unparseable ones stay quarantined, with their bodies; a second pass changes nothing.
    assert store(app).show(empty_id)["status"] == "quarantined"
    assert store(app).show(truncated_id)["raw_body_size"] == len(truncated_body)
    assert sorted(r["id"] for r in command(app, "reprocess", "--json")) == sorted([empty_id, truncated_id])
    assert store(app).stats()["quarantined"] == 2


# -- duplicates --------------------------------------------------------------------------------
def test_duplicate_within_the_window_is_answered_recorded_not_dispatched(make_app, tmp_path, deliver):
    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    first = client.post(WEBHOOK, data=body(object_id=1)).get_json()
    again = client.post(WEBHOOK, data=body(object_id=1))
    other = client.post(WEBHOOK, data=body(object_id=2)).get_json()
    assert again.status_code == 200  # Dolibarr must see a success, or the user's action rolls back
    assert again.get_json()["status"] == "duplicate" and again.get_json()["duplicate_of"] == first["id"]
    assert other["status"] == "accepted"
    shown = store(app).show(again.get_json()["id"])
    assert shown["status"] == "duplicate" and shown["duplicate_of"] == first["id"] and shown["deliveries"] == []
    stats = deliver(app)
    assert stats["events"] == 2 and stats["duplicates"] == 1
    assert sorted(r["event"] for r in read_records(tmp_path / "recorder.jsonl")) == sorted([first["id"], other["id"]])


def test_same_body_outside_the_window_is_dispatched(make_app, tmp_path, deliver):
    app = make_app(handler_config(tmp_path, recorder=True), DEDUP_WINDOW="0.3s")
    client = app.test_client()
    first = client.post(WEBHOOK, data=body(object_id=1)).get_json()
    time.sleep(0.4)
    second = client.post(WEBHOOK, data=body(object_id=1)).get_json()
    assert first["status"] == second["status"] == "accepted"
    deliver(app)
    assert sorted(r["event"] for r in read_records(tmp_path / "recorder.jsonl")) == sorted([first["id"], second["id"]])


def test_identical_bodies_posted_at_once_are_dispatched_once(make_app, tmp_path):
    app = make_app(handler_config(tmp_path, recorder=True))
    barrier = threading.Barrier(8)
    answers: list[dict] = []

    def post() -> None:
        client = app.test_client()
        barrier.wait()
        response = client.post(WEBHOOK, data=body(object_id=99))
        answers.append({"code": response.status_code, **response.get_json()})

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [a["code"] for a in answers] == [200] * 8
    accepted = [a for a in answers if a["status"] == "accepted"]
    assert len(accepted) == 1
    assert {a["duplicate_of"] for a in answers if a["status"] == "duplicate"} == {accepted[0]["id"]}
    assert counts(app)["deliveries"] == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_workers_are_woken_by_new_deliveries_only(make_app, tmp_path, database_url):
    """On PostgreSQL the ingest notifies the workers' LISTEN in its own transaction; a duplicate,
    which adds no delivery, wakes nobody (without the notification a worker waits up to 1 s)."""
    import psycopg

    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

        def notifications() -> int:
            return sum(1 for _ in listener.notifies(timeout=0.5))

        first = client.post(WEBHOOK, data=body(object_id=1)).get_json()
        assert first["status"] == "accepted" and notifications() == 1
        again = client.post(WEBHOOK, data=body(object_id=1)).get_json()
        assert again["status"] == "duplicate" and notifications() == 0
        assert client.post(WEBHOOK, data=body(object_id=2)).get_json()["status"] == "accepted"
        assert notifications() == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://", "postgresql+psycopg://"])
def test_each_form_of_a_postgresql_url_reaches_the_store_and_its_notifications(database_url, scheme):
    """Heroku's ``postgres://``, libpq's ``postgresql://`` and SQLAlchemy's own form: the
    engine and the workers' LISTEN connection (psycopg's, outside SQLAlchemy) both reach the
    database the URL names."""
    from dolibarr_webhooks.pipeline.wakeup import NotifyListener

    url_store = Store(scheme + database_url.split("://", 1)[1])
    try:
        url_store.migrate()
        listener = NotifyListener(url_store)
        try:
            assert not listener.wait(0.2, threading.Event(), 0.1)
            url_store.ingest(make_event(), ["recorder"])
            assert listener.wait(5, threading.Event(), 0.1)
        finally:
            listener.close()
    finally:
        url_store.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_ingest_is_one_statement_in_autocommit(make_app, tmp_path, database_url):
    """One round trip per event: the duplicate lock, the search, the rows and the NOTIFY are
    one call committed by itself, not BEGIN, the lock, a statement and COMMIT, and no ping of
    the connection before it. Seen in libpq's trace of what the committer's connection (the
    request engine's, held by the committer) sends: the call goes to the driver itself."""
    import tempfile

    from psycopg.pq import Trace

    app = make_app(handler_config(tmp_path, recorder=True))
    client = app.test_client()
    client.post(WEBHOOK, data=body(object_id=1))  # connection opened, schema checked
    pgconn = store(app).committer._pooled.driver_connection.pgconn
    trace = tempfile.TemporaryFile(mode="w+")
    try:
        for object_id, status in [(2, "accepted"), (2, "duplicate")]:
            trace.seek(0)
            trace.truncate()
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
            assert client.post(WEBHOOK, data=body(object_id=object_id)).get_json()["status"] == status
            pgconn.untrace()  # and flushed
            trace.seek(0)
            sent = [line.split("\t") for line in trace.read().splitlines() if line.startswith("F\t")]
            statements = [fields[3].split('"')[3].split("(")[0] for fields in sent if fields[2] in ("Parse", "Query")]
            assert statements == ["SELECT dolibarr_webhooks_ingest"], sent
            assert [fields[2] for fields in sent].count("Sync") == 1  # one round trip
    finally:
        trace.close()


def _plan(conn, sql: str, postgres: bool) -> str:
    """The plan of ``sql`` ($1 / ? for its one parameter), as text; PostgreSQL told to avoid
    sequential scans, which it prefers on a table this small (for the caller's transaction only:
    the connection goes back to the store's pool)."""
    if postgres:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql(f"PREPARE planned AS {sql.replace('?', '$1')}")
        plan = conn.exec_driver_sql("EXPLAIN EXECUTE planned(1)").scalars().all()
        conn.exec_driver_sql("DEALLOCATE planned")
        return "\n".join(plan)
    return "\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (1,)).all())


def test_an_ingest_writes_two_fewer_delivery_indexes_from_version_8(migrated_store):
    """Schema version 8 (issue #15): each index an ingest writes costs SQLite a page of log per
    commit. ix_deliveries_event (a copy of the unique index's first column) is gone, and
    ix_deliveries_delivered holds delivered deliveries only, not the pending ones each ingest
    adds; the lookups by event and the dashboard's latency still go through an index. Also on a
    store migrated from version 7."""
    store_ = migrated_store
    postgres = store_.is_postgres
    with store_.engine.begin() as conn:  # back to what version 7 made
        conn.exec_driver_sql("DROP INDEX ix_deliveries_delivered")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_delivered ON deliveries (delivered_at)")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_event ON deliveries (event_id)")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 8")
    assert store_.migrate() == [8]
    event = event_from_body(body("BILL_VALIDATE", 4242))
    assert store_.ingest(event, ["log", "other"]).deliveries == 2
    with store_.engine.begin() as conn:
        if postgres:
            indexes = dict(conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'deliveries'").all())
        else:
            indexes = dict(conn.exec_driver_sql(
                "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deliveries'"
            ).all())
        assert "ix_deliveries_event" not in indexes
        partial = indexes["ix_deliveries_delivered"].lower().replace("(", "").replace(")", "")
        assert "delivered_at is not null" in partial, partial
        by_event = _plan(conn, "SELECT plugin, status FROM deliveries WHERE event_id = ?", postgres)
        assert ("uq_deliveries_event_plugin" if postgres else "sqlite_autoindex_deliveries_1") in by_event, by_event
        latency = _plan(conn, "SELECT count(*) FROM deliveries WHERE delivered_at >= ?", postgres)
        assert "ix_deliveries_delivered" in latency, latency


def test_sqlite_indexes_only_the_quarantined_events_by_status_from_version_12(migrated_store):
    """Schema version 12 (issue #15): on SQLite, whose ``stats`` reads tallies, the index of every
    event by status served only the quarantined ones, and each ingest wrote it. It gives way to
    an index of the quarantined events alone, which the metrics' count and the quarantine's list
    go through; an accepted event is not in it. PostgreSQL, whose ``stats`` counts by status
    through ix_events_status, keeps it. Also on a store migrated from version 11."""
    store_ = migrated_store
    postgres = store_.is_postgres
    with store_.engine.begin() as conn:  # back to what version 11 made
        if not postgres:
            conn.exec_driver_sql("DROP INDEX ix_events_quarantined")
            conn.exec_driver_sql("CREATE INDEX ix_events_status ON events (status)")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 12")
    assert store_.migrate() == [12]
    store_.ingest(event_from_body(body("BILL_VALIDATE", 4243)), ["log"])
    store_.quarantine("evt_quarantined", b"{not json", "default", "not JSON", "0" * 64, time.time())
    assert [row["id"] for row in store_.quarantined()] == ["evt_quarantined"]
    assert store_.queue_gauges()["quarantined"] == 1
    with store_.engine.begin() as conn:
        if postgres:
            indexes = dict(conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'events'").all())
            assert "ix_events_status" in indexes and "ix_events_quarantined" not in indexes, indexes
            return
        indexes = dict(conn.exec_driver_sql(
            "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'").all())
        assert "ix_events_status" not in indexes, indexes
        assert "where status = 'quarantined'" in indexes["ix_events_quarantined"].lower(), indexes
        assert conn.exec_driver_sql("SELECT count(*) FROM events INDEXED BY ix_events_quarantined "
                                    "WHERE status = 'quarantined'").scalar() == 1
        compiled = {name: str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                    for name, query in (("gauge", gauges._QUARANTINED), ("list", queue._QUARANTINED_LIST))}
        for name, sql in compiled.items():
            plan = "\n".join(row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all())
            assert "ix_events_quarantined" in plan, (name, plan)


def test_the_claims_index_ends_with_the_id_from_version_13(migrated_store):
    """Schema version 13 (issue #15): ix_deliveries_due gets the id as its last column, the
    claim's tie-break, on a store migrated from version 12 too; the claim then reads it in
    order (test_a_claim_behind_a_backlog_reads_the_first_due_deliveries_only)."""
    store_ = migrated_store
    with store_.engine.begin() as conn:  # back to what version 12 made
        conn.exec_driver_sql("DROP INDEX ix_deliveries_due")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_due ON deliveries (plugin, status, next_attempt_at)")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version = 13")
    store_.ingest(event_from_body(body("BILL_VALIDATE", 4244)), ["log"])
    assert store_.migrate() == [13]
    with store_.engine.begin() as conn:
        if store_.is_postgres:
            definition = conn.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_deliveries_due'").scalar()
        else:
            definition = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'ix_deliveries_due'").scalar()
    assert definition.replace('"', "").endswith("(plugin, status, next_attempt_at, id)"), definition
    assert [claim.plugin for claim in store_.claim({"log": 5}, "test", lease=30)] == ["log"]


def _stored_payloads(store_: Store) -> dict[str, str | bytes]:
    with store_.engine.connect() as conn:
        return dict(conn.execute(text("SELECT id, payload FROM events")).all())


def _read_every_way(store_: Store, event_id: str) -> list:
    """The payload of one event, as each reader of the store gets it: show, the dashboard's
    page and the worker's claim."""
    from dolibarr_webhooks.store.dashboard import EventFilter, events_page

    shown = store_.show(event_id)["payload"]
    (listed,), _ = events_page(store_, EventFilter(search=event_id))
    (claim,) = store_.claim({"log": 1}, "w", 30)
    assert claim.event.id == event_id
    return [shown, listed["payload"], claim.event.to_dict()]


def test_sqlite_payloads_are_compressed_and_read_back_as_they_came(migrated_store):
    """store/payloads.py: an SQLite store keeps a payload lz4-compressed (a quarter of the
    invoice's pages), a PostgreSQL one as text (it compresses its own); every reader gets
    the event's JSON back."""
    from dolibarr_webhooks.samples import sample_body
    from dolibarr_webhooks.store import payloads

    event = event_from_body(sample_body("BILL_VALIDATE"))
    migrated_store.ingest(event, ["log"])
    stored = _stored_payloads(migrated_store)[event.id]
    if migrated_store.is_postgres:
        assert stored == event.to_json()
    else:
        assert isinstance(stored, bytes) and stored[:1] == b"\x01" and len(stored) < len(event.to_json()) / 3
        assert payloads.unpacked(stored) == event.to_json()
    assert _read_every_way(migrated_store, event.id) == [event.to_dict()] * 3


def test_a_payload_kept_as_text_is_read_as_before(migrated_store):
    """What a store written before compression holds (text), and a payload that lz4 does not
    shrink, kept as text: read the same way."""
    from dolibarr_webhooks.store import payloads

    noise = random.Random(1).randbytes(400).hex()
    assert payloads.packed(noise) == noise, "nothing to gain: kept as it is"
    event = event_from_body(body(object_id=7, note_private=noise))
    migrated_store.ingest(event, ["log"])
    with migrated_store.engine.begin() as conn:  # as an older release wrote it
        conn.execute(text("UPDATE events SET payload = :p WHERE id = :id"), {"p": event.to_json(), "id": event.id})
    assert _stored_payloads(migrated_store)[event.id] == event.to_json()
    assert _read_every_way(migrated_store, event.id) == [event.to_dict()] * 3


def test_a_payload_in_an_unknown_format_is_refused_by_name():
    from dolibarr_webhooks.store import payloads

    with pytest.raises(ValueError, match="unknown format"):
        payloads.parsed(b"\x07" + b"whatever a newer release writes")
    repeated = "[" + ",".join(['{"a":[1,2]}'] * 50) + "]"
    assert isinstance(payloads.packed(repeated), bytes)
    assert payloads.parsed(payloads.packed(repeated)) == [{"a": [1, 2]}] * 50 and payloads.parsed(None) is None


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_payloads_are_compressed_with_lz4(database_url):
    """Schema version 7: a payload PostgreSQL compresses (the 15.6 KB invoice) is compressed
    with lz4, not pglz, which cost the server twice the CPU of the insert (issue #15)."""
    from dolibarr_webhooks.samples import sample_body

    store_ = Store(database_url)
    try:
        store_.migrate()
        event = event_from_body(sample_body("BILL_VALIDATE"))
        assert store_.ingest(event, ["log"]).status == "accepted"
        with store_.engine.connect() as conn:
            method = conn.exec_driver_sql("SELECT pg_column_compression(payload) FROM events WHERE id = %s",
                                          (event.id,)).scalar()
        assert method == "lz4"
    finally:
        store_.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_postgresql_duplicate_search_stays_on_its_index_as_the_table_grows(database_url):
    """The search's plan is made once per connection. Made just after autovacuum analysed a
    small table, it would read the whole table at every ingest (cheaper for 20 rows) until the
    next analysis: it must go through the dedup index whatever the statistics say."""
    store_ = Store(database_url)

    def ingest(numbers: range) -> None:
        for number in numbers:
            event = event_from_body(body(object_id=number))
            assert store_.ingest(event, ["log"], dedup_window=600).status == "accepted"

    def scans() -> dict[str, int]:
        """Scans of events so far, by index and sequential (statistics lag each backend by up
        to a few seconds)."""
        with store_.engine.connect() as conn:
            found = dict(conn.execute(text(
                "SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE relname = 'events'")).all())
            found["sequential"] = conn.execute(text(
                "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'events'")).scalar()
        return found

    def after(searches: int) -> dict[str, int]:
        return wait_for(lambda: (lambda s: s if s["ix_events_dedup"] >= searches else None)(scans()), 20,
                        message=lambda: f"{searches} searches expected through ix_events_dedup: {scans()}")

    try:
        store_.migrate()
        ingest(range(1, 21))
        with store_.engine.begin() as conn:
            conn.execute(text("ANALYZE events"))  # as autovacuum does, while the table is small
        before = after(20)
        ingest(range(21, 321))
        now = after(before["ix_events_dedup"] + 300)
        assert now["sequential"] == before["sequential"], (before, now)
    finally:
        store_.dispose()


def _plan_run(store_: Store, statement, **parameters) -> str:
    """The plan of one of the worker's statements with these values, run: on PostgreSQL with
    the rows each step read (EXPLAIN ANALYZE, in a transaction rolled back)."""
    state = statement.compile(dialect=store_.engine.dialect).construct_expanded_state(parameters)
    with store_.engine.connect() as conn:
        if store_.is_postgres:
            driver = conn.connection.driver_connection
            with driver.transaction(force_rollback=True):
                plan = driver.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + state.statement, state.parameters)
                return "\n".join(row[0] for row in plan)
        values = tuple(state.parameters[name] for name in state.positiontup)
        return "\n".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + state.statement, values))


# Each state's part of a statement through ix_deliveries_due: PostgreSQL's, with the rows read, and SQLite's.
_SCANS = r"Index Scan using ix_deliveries_due on deliveries(?: \w+)? \(actual rows=(\d+)"
_SEARCHES = r"SEARCH deliveries USING (?:COVERING )?INDEX ix_deliveries_due \(plugin=\? AND status=\?"


def test_a_claim_behind_a_backlog_reads_the_first_due_deliveries_only(migrated_store):
    """Issue #15, schema version 13: behind a backlog (a burst of events, a plugin's target back
    after an outage) the claim reads each state's due deliveries of the plugin in the index's
    order and stops at ``limit``. It read every due delivery of the plugin and sorted them on
    PostgreSQL, at every claim: a backlog's drain slowed with its size. In order all the same:
    due time, then id; a lease that expired is taken again among them."""
    import dataclasses

    store_ = migrated_store
    event = event_from_body(body("BILL_VALIDATE", 77))
    for number in range(300):
        store_.ingest(dataclasses.replace(event, id=f"evt_backlog{number:05d}", body_sha256=f"{number:064x}"),
                      ["log", "other"])
    with store_.engine.begin() as conn:  # ties in due time, as a replay makes, and one failed delivery
        conn.execute(update(deliveries).values(next_attempt_at=1000.0))
        conn.execute(update(deliveries).where(deliveries.c.id == select(func.max(deliveries.c.id))
                                              .where(deliveries.c.plugin == "log").scalar_subquery())
                     .values(status=FAILED, next_attempt_at=999.0))
        if store_.is_postgres:
            conn.execute(text("ANALYZE deliveries"))  # statistics that see the backlog
    plan = _plan_run(store_, queue._CLAIM, plugin="log", now=time.time(), limit=2)
    if store_.is_postgres:
        assert "Bitmap" not in plan and not re.search(r"Sort Key: deliveries\w*\.next_attempt_at", plan), plan
        read = [int(n) for n in re.findall(_SCANS, plan)]
        assert len(read) == 3 and sum(read) <= 3 * 2, plan
    else:
        assert len(re.findall(_SEARCHES, plan)) == 3, plan
        assert "TEMP B-TREE" not in plan.split("\nSCAN due\n")[0], plan  # sorted: the 3 x limit taken only
    waiting = [row.id for row in _delivery_rows(store_, "log")]
    claimed = store_.claim({"log": 3}, "test", lease=30)
    failed_first = max(waiting)
    assert [c.delivery_id for c in claimed] == [failed_first] + sorted(waiting)[:2]
    with store_.engine.begin() as conn:  # the first lease expires: taken again, before the rest
        conn.execute(update(deliveries).where(deliveries.c.id == claimed[0].delivery_id)
                     .values(lease_expires_at=1.0))
    again = store_.claim({"log": 2}, "test", lease=30)
    assert [(c.delivery_id, c.reclaimed) for c in again] == [(failed_first, True), (sorted(waiting)[2], False)]
    store_.dispose()


def test_an_idle_look_reads_none_of_the_deliveries_waiting_for_a_retry(migrated_store):
    """Issue #15: a worker looks for due deliveries at each idle wake-up (each new event, each
    poll). Behind deliveries waiting for a retry (a plugin's target down for hours) the look
    reads the first due delivery of each state through the index, not every waiting one,
    which it read on PostgreSQL at every look."""
    import dataclasses

    store_ = migrated_store
    event = event_from_body(body("BILL_VALIDATE", 78))
    for number in range(300):
        store_.ingest(dataclasses.replace(event, id=f"evt_retry{number:05d}", body_sha256=f"{number:064x}"), ["log"])
    later = time.time() + 3600
    with store_.engine.begin() as conn:
        conn.execute(update(deliveries).values(status=FAILED, next_attempt_at=later))
        if store_.is_postgres:
            conn.execute(text("ANALYZE deliveries"))
    plan = _plan_run(store_, queue._HAS_DUE, plugins=["log", "other"], now=time.time())
    if store_.is_postgres:
        # Through the index of due time by plugin and state, or by state: nothing read either way.
        scans = r"Index (?:Only )?Scan using ix_deliveries_\w+ on deliveries(?: \w+)? \(actual rows=(\d+)"
        read = re.findall(scans, plan)
        assert "Bitmap" not in plan and "Rows Removed" not in plan and read == ["0", "0", "0"], plan
    else:
        assert len(re.findall(_SEARCHES, plan)) == 3, plan
    assert not store_.has_due(["log"])
    with store_.engine.begin() as conn:
        conn.execute(update(deliveries).where(deliveries.c.id == select(func.max(deliveries.c.id)).scalar_subquery())
                     .values(next_attempt_at=1.0))
    assert store_.has_due(["log"]) and not store_.has_due(["other"])
    store_.dispose()


def _delivery_rows(store_: Store, plugin: str):
    with store_.engine.connect() as conn:
        return conn.execute(select(deliveries.c.id).where(deliveries.c.plugin == plugin)).all()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_claims_and_idle_looks_skip_finished_deliveries(database_url):
    """A worker looks for due deliveries at every claim and every idle wake-up, while the table
    fills with delivered ones: SQLite must reach the waiting ones through the index's
    (plugin, status) prefix, not read every delivery of the plugin."""
    store_ = Store(database_url)
    store_.migrate()
    store_.ingest(event_from_body(body(object_id=1)), ["log"])
    looked: list[tuple[str, tuple]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and "FROM deliveries" in statement:
            looked.append((statement, parameters))

    sa_event.listen(store_.engine, "before_cursor_execute", record)
    try:
        assert store_.has_due(["log"])
        assert len(store_.claim({"log": 2}, "test", lease=30)) == 1
    finally:
        sa_event.remove(store_.engine, "before_cursor_execute", record)
    assert len(looked) == 1  # the look; the claim runs on the driver's cursor (Store._execute): as it does
    sql, names, own = compiled.compiled_once(store_.engine.dialect, queue._CLAIM, None)
    claim_parameters = dict(own, plugin="log", now=time.time(), limit=2)
    looked.append((sql, tuple(claim_parameters[name] for name in names)))
    with store_.engine.connect() as conn:
        for statement, parameters in looked:
            plan = " ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
            assert "ix_deliveries_due (plugin=? AND status=?)" in plan, (statement, plan)
    store_.dispose()


def _prepared_again(path: str, sql: str) -> int:
    """How many times SQLite prepared ``sql`` again when it ran twice, its parameters bound
    anew each time, as Python's sqlite3 binds them at each execution: SQLite's own count
    (``sqlite3_stmt_status``, SQLITE_STMTSTATUS_REPREPARE), which Python's module does not
    expose. Through ``ctypes``, on the SQLite that module is linked to; in a transaction
    rolled back. Every parameter is bound to NULL: which value does not matter, the binding
    does (a statement whose plan depends on a parameter's value expires when it is bound)."""
    import _sqlite3
    import ctypes

    lib = ctypes.CDLL(_sqlite3.__file__)  # its symbols and those of the SQLite it is linked to
    pointer = ctypes.c_void_p
    for name, argtypes in (("sqlite3_open_v2", [ctypes.c_char_p, ctypes.POINTER(pointer), ctypes.c_int, pointer]),
                           ("sqlite3_prepare_v2", [pointer, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(pointer),
                                                   pointer]),
                           ("sqlite3_exec", [pointer, ctypes.c_char_p, pointer, pointer, pointer]),
                           ("sqlite3_bind_parameter_count", [pointer]), ("sqlite3_bind_null", [pointer, ctypes.c_int]),
                           ("sqlite3_step", [pointer]), ("sqlite3_reset", [pointer]),
                           ("sqlite3_stmt_status", [pointer, ctypes.c_int, ctypes.c_int]),
                           ("sqlite3_finalize", [pointer]), ("sqlite3_close_v2", [pointer])):
        getattr(lib, name).argtypes = argtypes
    sqlite_ok, sqlite_row, open_readwrite, status_reprepare = 0, 100, 2, 5
    db, stmt = pointer(), pointer()
    assert lib.sqlite3_open_v2(path.encode(), ctypes.byref(db), open_readwrite, None) == sqlite_ok
    try:
        assert lib.sqlite3_prepare_v2(db, sql.encode(), -1, ctypes.byref(stmt), None) == sqlite_ok, sql
        assert lib.sqlite3_exec(db, b"BEGIN", None, None, None) == sqlite_ok
        for _ in range(2):
            for number in range(1, lib.sqlite3_bind_parameter_count(stmt) + 1):
                lib.sqlite3_bind_null(stmt, number)
            while lib.sqlite3_step(stmt) == sqlite_row:
                pass
            lib.sqlite3_reset(stmt)  # an INSERT of NULLs fails its constraints: only its preparation counts
        return lib.sqlite3_stmt_status(stmt, status_reprepare, 0)
    finally:
        lib.sqlite3_finalize(stmt)
        lib.sqlite3_exec(db, b"ROLLBACK", None, None, None)
        lib.sqlite3_close_v2(db)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_prepares_the_ingest_and_the_workers_statements_once(database_url):
    """SQLite plans a statement again at each run when it bound a parameter compared with a
    column that a partial index's condition names (``status = ?`` against ix_events_quarantined's
    ``status = 'quarantined'``): the plan depends on the value, so every new binding expires it.
    The duplicate search did, and paid its planning again at every ingest (issue #15). Every
    statement of the ingest and of the worker's rounds is prepared once: each found by running
    it, through the store (on the driver's cursor or through SQLAlchemy)."""
    store_ = Store(database_url)
    store_.migrate()
    statements: set[str] = set()

    def record(_conn, _cursor, statement, _parameters, _context, _executemany):
        statements.add(statement)

    sa_event.listen(store_.engine, "before_cursor_execute", record)
    try:
        for object_id in (1, 1, 2):  # the second a duplicate
            store_.ingest(event_from_body(body(object_id=object_id)), ["log"], dedup_window=3600)
        assert store_.has_due(["log"])
        failing, delivered = store_.claim({"log": 5}, "test", lease=30)
        assert store_.finish(failing, FAILED, "boom", time.time() + 60, "test")
        assert store_.next_retry_at(["log"]) is not None
        assert store_.finish_and_claim(delivered, "delivered", None, None, "test", lease=30)[0]
    finally:
        sa_event.remove(store_.engine, "before_cursor_execute", record)
    statements.update(sql for (_, _, dialect), (sql, _, _) in compiled._compiled.items() if dialect == "sqlite")
    path = store_.engine.url.database
    store_.dispose()
    planned_again = {sql: count for sql in statements if (count := _prepared_again(path, sql))}
    assert planned_again == {}
    search = next(sql for sql in statements if sql.startswith("SELECT events.id"))  # it ran, and kept its index
    with contextlib.closing(sqlite3.connect(path)) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN " + search, [None] * search.count("?")).fetchall()
    assert "USING INDEX ix_events_dedup" in str(plan), plan


# -- retention ---------------------------------------------------------------------------------
def test_a_large_purge_goes_chunk_by_chunk_and_deletes_exactly_what_it_should(migrated_store):
    """``purge`` deletes a chunk of events per transaction (the requests get SQLite's writers'
    turn between two), reading each chunk from where the last ended: events received at the
    same instant across a chunk's end, and events it keeps (unfinished, quarantined) among
    those it deletes, are neither skipped nor deleted twice."""
    import dataclasses
    from datetime import datetime, timezone

    from sqlalchemy import update

    from dolibarr_webhooks.store import QUARANTINED, deliveries, events
    from dolibarr_webhooks.testing import make_event

    old = int(time.time()) - 30 * 86400
    kept, unfinished = set(), set()
    for n in range(40):
        received = old + n // 3  # three events per second: ties at every chunk's end
        event = dataclasses.replace(make_event("COMPANY_CREATE", id=n), id=new_event_id(received),
                                    received_at=datetime.fromtimestamp(received, timezone.utc))
        migrated_store.ingest(event, ["log"])
        with migrated_store.engine.begin() as conn:
            if n % 7 == 3:
                conn.execute(update(events).where(events.c.id == event.id).values(status=QUARANTINED))
                kept.add(event.id)
            elif n % 5 != 4:
                conn.execute(update(deliveries).where(deliveries.c.event_id == event.id).values(status="delivered"))
            else:
                unfinished.add(event.id)
    recent = make_event("COMPANY_CREATE", id=99)
    migrated_store.ingest(recent, ["log"])
    migrated_store.fold_events(again=True)  # PostgreSQL: stored after the fact, below its horizon

    def ids():
        with migrated_store.engine.connect() as conn:
            return set(conn.execute(text("SELECT id FROM events")).scalars())

    commits = []
    sa_event.listen(migrated_store.engine, "commit", commits.append)
    everything = ids()
    assert migrated_store.purge(86400, chunk=4) == 40 - len(kept) - len(unfinished)
    assert ids() == kept | unfinished | {recent.id}
    assert len(commits) >= (40 - len(kept) - len(unfinished)) / 4, "a transaction per chunk"
    with migrated_store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM deliveries WHERE event_id NOT IN "
                                 "(SELECT id FROM events)")).scalar() == 0
    assert migrated_store.purge(86400, include_unfinished=True, chunk=4) == len(kept) + len(unfinished)
    assert ids() == {recent.id} and everything > {recent.id}
    assert migrated_store.stats()["events"] == 1


def test_a_large_replay_goes_chunk_by_chunk_and_replays_exactly_what_it_should(migrated_store):
    """``replay`` makes a chunk of deliveries due per transaction, in the order of their ids:
    with each filter, every delivery asked for and no other, whatever chunk it falls in, and
    never one that runs."""
    import dataclasses
    from datetime import datetime, timezone

    from sqlalchemy import update

    from dolibarr_webhooks.store import DEAD, DELIVERED, PENDING, RUNNING, deliveries
    from dolibarr_webhooks.store.inspect import REPLAY_CHUNK
    from dolibarr_webhooks.testing import make_event

    now = int(time.time())
    states = [DEAD, DELIVERED, DEAD, RUNNING, DEAD]
    for n in range(30):
        received = now - (30 - n) * 3600
        event = dataclasses.replace(make_event("BILL_VALIDATE", id=n), id=new_event_id(received),
                                    received_at=datetime.fromtimestamp(received, timezone.utc))
        migrated_store.ingest(event, ["log", "mail"])
        with migrated_store.engine.begin() as conn:
            for number, plugin in enumerate(("log", "mail")):
                conn.execute(update(deliveries).where(deliveries.c.event_id == event.id, deliveries.c.plugin == plugin)
                             .values(status=states[(n + number) % len(states)], attempts=3))
    migrated_store.fold_events(again=True)  # PostgreSQL: stored after the fact, below its horizon

    def rows():
        with migrated_store.engine.connect() as conn:
            return {row.id: row for row in conn.execute(text(
                "SELECT d.id, d.plugin, d.status, d.attempts, e.received_at FROM deliveries d "
                "JOIN events e ON e.id = d.event_id"))}

    before = rows()
    since = now - 12 * 3600 - 1
    wanted = {i for i, row in before.items()
              if row.status == DEAD and row.plugin == "mail" and row.received_at >= since}
    commits, updates = [], []

    def record(_conn, _cursor, statement, parameters, _context, _executemany):
        if statement.lstrip().upper().startswith("UPDATE DELIVERIES"):
            updates.append((statement, parameters))

    sa_event.listen(migrated_store.engine, "commit", commits.append)
    sa_event.listen(migrated_store.engine, "before_cursor_execute", record)
    assert migrated_store.replay(statuses=[DEAD], plugin="mail", since=since, chunk=2) == len(wanted) > 2
    sa_event.remove(migrated_store.engine, "before_cursor_execute", record)
    assert len(commits) > len(wanted) / 2, "a transaction per chunk"
    if not migrated_store.is_postgres:  # each chunk a range of the table, never all the rows of a state
        statement, parameters = updates[0]
        with migrated_store.engine.connect() as conn:
            plan = " ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
        assert "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan
    after = rows()
    assert {i for i, row in after.items() if row.status == PENDING and row.attempts == 0} == wanted
    assert {i: row for i, row in after.items() if i not in wanted} == {i: row for i, row in before.items()
                                                                       if i not in wanted}
    assert migrated_store.stats()["deliveries"][DEAD] == sum(row.status == DEAD for row in after.values()) > 0
    # What fits in one chunk is found through the indexes, and is exactly what was asked too.
    log_dead = {i for i, row in after.items() if row.status == DEAD and row.plugin == "log"}
    assert 0 < len(log_dead) <= REPLAY_CHUNK and migrated_store.replay(statuses=[DEAD], plugin="log") == len(log_dead)
    assert {i for i, row in rows().items() if row.status == PENDING and row.attempts == 0} == wanted | log_dead
    assert migrated_store.replay(statuses=[DEAD], plugin="log") == 0
    everything = [i for i, row in rows().items() if row.status != RUNNING]
    assert migrated_store.replay(chunk=4) == len(everything)
    assert {i for i, row in rows().items() if row.status == PENDING} == set(everything)
    assert {row.status for row in rows().values()} == {PENDING, RUNNING}
    assert migrated_store.stats()["deliveries"][DEAD] == 0


def test_purge_keeps_unfinished_events_unless_asked(make_app, tmp_path):
    # Three apps on one database, as three processes would be: the first's failer is dead at once on
    # BILL_PAYED; the second's leaves a BILL_VALIDATE delivery failed, waiting an hour for a retry;
    # the third adds a sleeper delivery that no running worker takes, so it stays pending.
    app = make_app(handler_config(tmp_path, recorder=True) | {
        "failer": {"mode": "permanent", "events": ["BILL_PAYED"]}})
    retrying = make_app(handler_config(tmp_path, recorder=True) | {
        "failer": {"mode": "always", "events": ["BILL_VALIDATE"]}}, RETRY_SCHEDULE="1h")
    with_sleeper = make_app(handler_config(tmp_path, recorder=True, sleeper=0, events=["COMPANY_CREATE"]))
    client = app.test_client()
    # A worker runs every due delivery of its plugins, whatever app stored it: one app at a time.
    done = client.post(WEBHOOK, data=body("COMPANY_CREATE", object_id=1)).get_json()["id"]
    dead = client.post(WEBHOOK, data=body("BILL_PAYED", object_id=2)).get_json()["id"]
    with running_worker(app):
        wait_for(lambda: not store(app).list_deliveries(status="pending"), message="first deliveries")
    failed = retrying.test_client().post(WEBHOOK, data=body("BILL_VALIDATE", object_id=3)).get_json()["id"]
    with running_worker(retrying):
        wait_for(lambda: not store(app).list_deliveries(status="pending"), message="a failed delivery")
    pending = with_sleeper.test_client().post(WEBHOOK, data=body("COMPANY_CREATE", object_id=4)).get_json()["id"]
    quarantined = client.post(WEBHOOK, data=b"").get_json()["id"]
    time.sleep(0.6)
    with running_worker(app):  # a recent event, all delivered: too young to purge
        recent = client.post(WEBHOOK, data=body("COMPANY_CREATE", object_id=5)).get_json()["id"]
        wait_for(lambda: {d["status"] for d in by_plugin(app, recent).values()} == {"delivered"},
                 message="recent delivered")
    assert {p: d["status"] for p, d in by_plugin(app, dead).items()} == {
        "failer": "dead", "recorder": "delivered", "log": "delivered"}
    assert by_plugin(app, failed)["failer"]["status"] == "failed"
    assert by_plugin(app, pending)["sleeper"]["status"] == "pending"

    # An age between the recent event's and the others' (at least the 0.6 s slept apart).
    received = {i: store(app).show(i)["received_at"] for i in (pending, recent)}
    older_than = f"{time.time() - (received[pending] + received[recent]) / 2:.3f}s"
    assert command(app, "purge", "--older-than", older_than, "--json") == {"purged": 1}
    assert store(app).show(done) is None
    for kept in (dead, failed, pending, quarantined, recent):
        assert store(app).show(kept) is not None, kept

    assert command(app, "purge", "--older-than", older_than, "--include-unfinished", "--json") == {"purged": 4}
    assert [store(app).show(i) is None for i in (dead, failed, pending, quarantined)] == [True] * 4
    assert store(app).show(recent) is not None
    # No orphans: every delivery belongs to an event, every attempt to a delivery.
    with store(app).engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM deliveries WHERE event_id NOT IN "
                                    "(SELECT id FROM events)").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM attempts WHERE delivery_id NOT IN "
                                    "(SELECT id FROM deliveries)").scalar() == 0
    assert counts(app) == {"events": 1, "deliveries": 2, "attempts": 2}


# -- schema migrations -------------------------------------------------------------------------
def test_schema_is_migrated_by_the_migrate_command_and_on_start(make_app, tmp_path):
    app = make_app(handler_config(tmp_path, recorder=True), AUTO_MIGRATE=False)
    assert store(app).schema_version() == 0
    client = app.test_client()
    # Without a schema nothing can be kept: Dolibarr is told to try again, not told "OK".
    assert client.post(WEBHOOK, data=body(object_id=1)).status_code == 503
    assert client.get("/ready").status_code == 503
    assert command(app, "migrate").strip() == f"applied migrations {list(range(1, SCHEMA_VERSION + 1))}"
    assert command(app, "migrate").strip() == "schema is up to date"
    assert store(app).schema_version() == SCHEMA_VERSION
    assert client.post(WEBHOOK, data=body(object_id=1)).status_code == 200
    assert client.get("/ready").status_code == 200

    started = make_app(handler_config(tmp_path, recorder=True))  # AUTO_MIGRATE: a no-op now
    assert store(started).migrate() == []
    with store(started).engine.connect() as conn:
        versions = [row[0] for row in conn.exec_driver_sql("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert counts(started)["events"] == 1


@pytest.mark.slow
def test_processes_starting_at_once_migrate_once(database_url, tmp_path, make_app):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    env.update({"DOLIBARR_WEBHOOKS_SECRET": WEBHOOKS_TEST_SECRET, "DOLIBARR_WEBHOOKS_DATABASE_URL": database_url})
    script = Path(sys.executable).parent / "dolibarr-webhooks"
    # Each process migrates at start (AUTO_MIGRATE) and then again with the command.
    processes = [subprocess.Popen([str(script), "migrate"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        outputs.append(out)
        assert process.returncode == 0, out
    app = make_app(AUTO_MIGRATE=False)
    assert store(app).schema_version() == SCHEMA_VERSION
    with store(app).engine.connect() as conn:
        versions = [row[0] for row in conn.exec_driver_sql("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, SCHEMA_VERSION + 1)), outputs
    assert app.test_client().post(WEBHOOK, data=body(object_id=1)).status_code == 200


@pytest.mark.parametrize(("written", "taken"), [
    ("postgresql://shop:pw@db1:5432,db2:5433/hooks?target_session_attrs=read-write",
     "postgresql+psycopg://shop:pw@/hooks?host=db1:5432&host=db2:5433&target_session_attrs=read-write"),
    ("postgres://db1,db2/hooks", "postgresql+psycopg:///hooks?host=db1&host=db2"),
    ("postgresql://shop@[::1]:5432,10.0.0.2:5432", "postgresql+psycopg://shop@/?host=[::1]:5432&host=10.0.0.2:5432"),
    ("postgresql://shop@db1:5432/hooks", "postgresql+psycopg://shop@db1:5432/hooks"),
    ("sqlite:////var/lib/x,y.sqlite3", "sqlite:////var/lib/x,y.sqlite3"),
])
def test_several_servers_as_libpq_writes_them_are_taken_as_sqlalchemy_takes_them(written, taken):
    assert normalise_url(written) == taken
