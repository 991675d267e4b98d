"""The durable store: events, one delivery per plugin and event, and every attempt.

SQLAlchemy Core over SQLite (the embedded default, WAL) or PostgreSQL (several
hosts): one schema, one set of queries. Claims are safe across processes and
hosts: on SQLite every write transaction is ``BEGIN IMMEDIATE`` (one writer at a
time, so a claim is atomic), on PostgreSQL ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sqlalchemy import (Boolean, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String,
                        Table, Text, UniqueConstraint, and_, bindparam, create_engine, delete, event as sa_event, func,
                        insert, or_, select, text, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from . import fastjson
from .event import Event

NOTIFY_CHANNEL = "dolibarr_webhooks"

# Delivery states. ``failed`` waits for a retry; ``dead`` waits for a replay.
PENDING, RUNNING, DELIVERED, FAILED, DEAD = "pending", "running", "delivered", "failed", "dead"
DELIVERY_STATES = (PENDING, RUNNING, DELIVERED, FAILED, DEAD)
# Event states.
ACCEPTED, DUPLICATE, QUARANTINED = "accepted", "duplicate", "quarantined"

metadata = MetaData()

events = Table(
    "events", metadata,
    Column("id", String(40), primary_key=True),
    Column("source", String(100), nullable=False),
    # Text without a length: Dolibarr decides how long a code, a type, an id or a ref is
    # (schema version 3 turned PostgreSQL's varchar columns into text).
    Column("trigger_code", Text, nullable=False),
    Column("sent_code", Text),
    Column("element", Text),
    Column("object_id", Text),
    Column("ref", Text),
    Column("entity", Text),
    Column("received_at", Float, nullable=False),
    Column("body_sha256", String(64), nullable=False),
    Column("test", Boolean, nullable=False, default=False),
    Column("status", String(20), nullable=False),
    Column("duplicate_of", String(40)),
    Column("payload", Text),  # the Event as JSON, scrubbed; NULL for a duplicate (see duplicate_of)
    Column("raw_body", LargeBinary),  # kept only for quarantined bodies
    Column("error", Text),
    Column("remote_addr", Text),  # from X-Forwarded-For behind proxies: any length
    Column("label", Text),  # what a person calls the object (labels.object_label)
    Column("scrub_rule", String(64)),  # credentials.Scrubber.fingerprint of the rule the payload went through
)
Index("ix_events_dedup", events.c.source, events.c.body_sha256, events.c.received_at)
# Every event of one object, from its creation to its deletion.
Index("ix_events_object", events.c.element, events.c.object_id, events.c.received_at)
# check and scrub find the events stored under an older rule (or none) without reading payloads.
Index("ix_events_scrub_rule", events.c.scrub_rule, events.c.source)
Index("ix_events_received", events.c.received_at)
Index("ix_events_status", events.c.status)

deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(40), ForeignKey("events.id"), nullable=False),
    Column("plugin", String(100), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("runs", Integer, nullable=False, default=0),
    Column("reclaims", Integer, nullable=False, default=0),  # claimed again after a lease expired
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_token", String(32)),
    Column("lease_expires_at", Float),
    Column("locked_by", String(100)),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("delivered_at", Float),
    UniqueConstraint("event_id", "plugin", name="uq_deliveries_event_plugin"),
)
Index("ix_deliveries_due", deliveries.c.plugin, deliveries.c.status, deliveries.c.next_attempt_at)
Index("ix_deliveries_status", deliveries.c.status, deliveries.c.next_attempt_at)
Index("ix_deliveries_event", deliveries.c.event_id)
Index("ix_deliveries_delivered", deliveries.c.delivered_at)  # the dashboard's latency over 24 h (version 6)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", Integer, ForeignKey("deliveries.id"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("worker", String(100)),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("outcome", String(20), nullable=False),
    Column("error", Text),
    Column("duration_ms", Float),
)
Index("ix_attempts_delivery", attempts.c.delivery_id)
Index("ix_attempts_started", attempts.c.started_at)  # the dashboard's recent failure rates (version 6)

# Each worker's last sign of life, for the dashboard (schema version 6).
workers = Table(
    "workers", metadata,
    Column("name", String(100), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),
    Column("plugins", Text),
)

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("applied_at", Float, nullable=False),
)


# The ingest path's statements, built once: building a 17-column INSERT per request cost more
# CPU than the rest of the request (SQLAlchemy caches the compiled form of a reused statement).
_INSERT_EVENT = insert(events)
_INSERT_DELIVERY = insert(deliveries)
_FIND_DUPLICATE = select(events.c.id).where(
    events.c.source == bindparam("source"),
    events.c.body_sha256 == bindparam("body_sha256"),
    events.c.trigger_code == bindparam("trigger_code"),
    events.c.object_id.is_not_distinct_from(bindparam("object_id")),
    events.c.received_at >= bindparam("since"),
    events.c.status == bindparam("accepted"),
).limit(1)

# On PostgreSQL every statement is a round trip, and each costs the web process more CPU in
# psycopg than the statement costs the server. The ingest is therefore one call, in
# autocommit, of a database function: the duplicate lock, the duplicate search, the event,
# its deliveries and the workers' wake-up, in one round trip instead of four (BEGIN, lock,
# statement, COMMIT). Against the CTE statement it replaced: 0.40 -> 0.26 ms of the web
# process's CPU per ingest, 0.96 -> 0.68 ms from call to commit. Its definition is the latest
# migration that creates dolibarr_webhooks_ingest (schema version 2, then 5).
_INGEST_POSTGRES = text(
    "SELECT dolibarr_webhooks_ingest(:id, :source, :trigger_code, :sent_code, :element, :object_id, :ref, :entity, "
    ":label, :scrub_rule, :received_at, :body_sha256, :test, :payload, :remote_addr, "
    ":dedup, :since, :now, :plugins, :accepted, :duplicate, :pending, :channel, :lock_timeout)"
)


def _postgresql_ingest_function(conn: Connection) -> None:
    """Schema version 2. A VOLATILE function's statements each take a new snapshot, so the
    duplicate search after the advisory lock sees an identical body committed while this call
    waited for it; the call being one statement, its implicit transaction holds the lock to
    the commit. SQLite, in-process and without round trips, keeps the separate statements.

    ``enable_seqscan = off``: the function's plans are made once per connection. Made while
    the table was small and freshly analysed, the search's plan reads the whole table (cheaper
    for 20 rows) and keeps doing so, ever slower, until autovacuum analyses it again; at 1,000
    events/s that is thousands of rows per search. Without sequential scans the search always
    goes through ix_events_dedup."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("""
CREATE OR REPLACE FUNCTION dolibarr_webhooks_ingest(
    p_id varchar, p_source varchar, p_trigger_code varchar, p_sent_code varchar, p_element varchar,
    p_object_id varchar, p_ref varchar, p_entity varchar, p_received_at double precision,
    p_body_sha256 varchar, p_test boolean, p_payload text, p_remote_addr varchar,
    p_dedup boolean, p_since double precision, p_now double precision, p_plugins text[],
    p_accepted varchar, p_duplicate varchar, p_pending varchar, p_channel text)
RETURNS varchar LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
DECLARE
    found varchar;
BEGIN
    IF p_dedup THEN
        -- Serialise identical bodies, so that two copies cannot both pass the search.
        PERFORM pg_advisory_xact_lock(hashtext(p_source || ':' || p_body_sha256));
        SELECT id INTO found FROM events
        WHERE source = p_source AND body_sha256 = p_body_sha256 AND trigger_code = p_trigger_code
          AND object_id IS NOT DISTINCT FROM p_object_id AND received_at >= p_since AND status = p_accepted
        ORDER BY received_at DESC
        LIMIT 1;
    END IF;
    INSERT INTO events (id, source, trigger_code, sent_code, element, object_id, ref, entity, received_at,
                        body_sha256, test, payload, remote_addr, status, duplicate_of)
    VALUES (p_id, p_source, p_trigger_code, p_sent_code, p_element, p_object_id, p_ref, p_entity, p_received_at,
            p_body_sha256, p_test, p_payload, p_remote_addr,
            CASE WHEN found IS NULL THEN p_accepted ELSE p_duplicate END, found);
    IF found IS NULL AND cardinality(p_plugins) > 0 THEN
        INSERT INTO deliveries (event_id, plugin, status, attempts, runs, reclaims, next_attempt_at,
                                created_at, updated_at)
        SELECT p_id, plugin, p_pending, 0, 0, 0, p_now, p_now, p_now FROM unnest(p_plugins) AS plugin;
        PERFORM pg_notify(p_channel, '');
    END IF;
    RETURN found;
END
$$
""")


# The columns holding text Dolibarr (or a proxy's X-Forwarded-For) decides the length of.
_OPEN_TEXT_COLUMNS = ("trigger_code", "sent_code", "element", "object_id", "ref", "entity", "remote_addr")


def _text_columns(conn: Connection) -> None:
    """Schema version 3. PostgreSQL enforced the lengths of version 1's varchar columns, so a
    ref of 256 characters or a long X-Forwarded-For failed the ingest, and the user's action
    in Dolibarr with it. varchar to text is binary-coercible: no table rewrite, and the
    indexes stay valid. SQLite never enforced a length."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("ALTER TABLE events " + ", ".join(f"ALTER COLUMN {column} TYPE text"
                                                           for column in _OPEN_TEXT_COLUMNS))


def _objects_and_credentials(conn: Connection) -> None:
    """Schema version 4: each event's label and the scrub rule its payload went through
    (credentials.Scrubber.fingerprint), an index to list the events of one object and one to
    find events scrubbed under an older rule. A new database got the columns and indexes from
    version 1's ``create_all``, so every step checks first."""
    from sqlalchemy import inspect

    columns = {c["name"] for c in inspect(conn).get_columns("events")}
    for column in (events.c.label, events.c.scrub_rule):
        if column.name not in columns:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE events ADD COLUMN {column.name} {kind}")
    for index in events.indexes:
        if index.name in ("ix_events_object", "ix_events_scrub_rule"):
            index.create(conn, checkfirst=True)


def _postgresql_ingest_within_deadline(conn: Connection) -> None:
    """Schema version 5: version 2's function with three changes.

    ``p_lock_timeout``: the rest of the request's deadline, for every lock the call waits for
    (the duplicate lock, a ``LOCK TABLE``, a row lock). Set inside the function because a lock
    is taken when a statement is planned: a ``set_config`` beside the call in the same
    ``SELECT`` would come too late. ``is_local``: it ends with the call's implicit transaction.
    (``statement_timeout`` cannot be changed for a running statement: the request engine sets
    it per connection, see ``Store``.) A call that times out is rolled back whole.

    A duplicate keeps no payload: ``duplicate_of`` names the event whose body it repeats.

    ``p_label`` and ``p_scrub_rule`` fill version 4's columns.

    Version 2's function (another signature) is left in place: processes of the previous
    release keep calling it until they are restarted."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql("""
CREATE OR REPLACE FUNCTION dolibarr_webhooks_ingest(
    p_id varchar, p_source varchar, p_trigger_code varchar, p_sent_code varchar, p_element varchar,
    p_object_id varchar, p_ref varchar, p_entity varchar, p_label text, p_scrub_rule varchar,
    p_received_at double precision, p_body_sha256 varchar, p_test boolean, p_payload text, p_remote_addr varchar,
    p_dedup boolean, p_since double precision, p_now double precision, p_plugins text[],
    p_accepted varchar, p_duplicate varchar, p_pending varchar, p_channel text, p_lock_timeout text)
RETURNS varchar LANGUAGE plpgsql VOLATILE SET enable_seqscan = off AS $$
DECLARE
    found varchar;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    IF p_dedup THEN
        -- Serialise identical bodies, so that two copies cannot both pass the search.
        PERFORM pg_advisory_xact_lock(hashtext(p_source || ':' || p_body_sha256));
        -- status || '': a plan made while the table had a few hundred rows and no statistics
        -- went through ix_events_status (every accepted event) instead of ix_events_dedup.
        SELECT id INTO found FROM events
        WHERE source = p_source AND body_sha256 = p_body_sha256 AND trigger_code = p_trigger_code
          AND object_id IS NOT DISTINCT FROM p_object_id AND received_at >= p_since AND status || '' = p_accepted
        ORDER BY received_at DESC
        LIMIT 1;
    END IF;
    INSERT INTO events (id, source, trigger_code, sent_code, element, object_id, ref, entity, label, scrub_rule,
                        received_at, body_sha256, test, payload, remote_addr, status, duplicate_of)
    VALUES (p_id, p_source, p_trigger_code, p_sent_code, p_element, p_object_id, p_ref, p_entity, p_label,
            p_scrub_rule, p_received_at, p_body_sha256, p_test, CASE WHEN found IS NULL THEN p_payload END,
            p_remote_addr, CASE WHEN found IS NULL THEN p_accepted ELSE p_duplicate END, found);
    IF found IS NULL AND cardinality(p_plugins) > 0 THEN
        INSERT INTO deliveries (event_id, plugin, status, attempts, runs, reclaims, next_attempt_at,
                                created_at, updated_at)
        SELECT p_id, plugin, p_pending, 0, 0, 0, p_now, p_now, p_now FROM unnest(p_plugins) AS plugin;
        PERFORM pg_notify(p_channel, '');
    END IF;
    RETURN found;
END
$$
""")


# Each distinct scrub rule in one index look-up (a loose index scan, on both databases).
_DISTINCT_RULES = text(
    "WITH RECURSIVE rules(rule) AS ("
    " SELECT (SELECT scrub_rule FROM events WHERE scrub_rule IS NOT NULL ORDER BY scrub_rule LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT scrub_rule FROM events WHERE scrub_rule > rules.rule ORDER BY scrub_rule LIMIT 1)"
    " FROM rules WHERE rules.rule IS NOT NULL"
    ") SELECT rule FROM rules WHERE rule IS NOT NULL"
)


_PROBE = update(schema_migrations).where(
    schema_migrations.c.version == select(func.max(schema_migrations.c.version)).scalar_subquery()
).values(applied_at=schema_migrations.c.applied_at)

# The worker's per-delivery statements, built once for the same reason. The SET columns of
# _FINISH_HELD are the keys given at execution, other than its WHERE parameters.
_LEASE = update(deliveries).where(deliveries.c.id == bindparam("lease_id")).values(
    runs=deliveries.c.runs + 1, reclaims=deliveries.c.reclaims + bindparam("reclaimed"))
_EVENT_PAYLOAD = select(events.c.payload).where(events.c.id == bindparam("event_id"))
_FINISH_HELD = update(deliveries).where(deliveries.c.id == bindparam("held_id"),
                                        deliveries.c.lease_token == bindparam("held_token"))
_INSERT_ATTEMPT = insert(attempts)
_NEXT_RETRY = select(func.min(deliveries.c.next_attempt_at)).where(
    deliveries.c.status == bindparam("failed"), deliveries.c.plugin.in_(bindparam("plugins", expanding=True)))


def _due(now: float):
    """Deliveries a worker may claim at ``now``: waiting and due, or running on a lease that
    expired. The leading ``status IN`` lets ix_deliveries_due skip the delivered and dead rows
    (the bulk of the table); without it SQLite read every delivery of the plugin at each claim
    and each idle look: 0.5 ms at 7,500 rows and growing, against 0.006 ms."""
    return and_(deliveries.c.status.in_((PENDING, FAILED, RUNNING)),
                or_(and_(deliveries.c.status.in_((PENDING, FAILED)), deliveries.c.next_attempt_at <= now),
                    and_(deliveries.c.status == RUNNING, deliveries.c.lease_expires_at < now)))


def _initial_schema(conn: Connection) -> None:
    metadata.create_all(conn, tables=[events, deliveries, attempts], checkfirst=True)


# The dashboard's events page: newest first within one code, and a case-insensitive prefix
# search on the reference and the label. On expressions, so that the ingest's duplicate search
# (source, body, code, object, time) can never take one of them for ix_events_dedup: given an
# index on (trigger_code, received_at), PostgreSQL's plan made after an ANALYZE of a small
# table read every event of the code within the window at each ingest. Kept out of
# ``metadata``: SQLAlchemy cannot reflect them, and warns whenever it reads a table's indexes
# (version 4 does) once one exists.
_SEARCH_INDEXES = ("CREATE INDEX IF NOT EXISTS ix_events_code_search ON events (lower(trigger_code), received_at)",
                   "CREATE INDEX IF NOT EXISTS ix_events_ref_search ON events (lower(ref))",
                   "CREATE INDEX IF NOT EXISTS ix_events_label_search ON events (lower(label))")


def _dashboard(conn: Connection) -> None:
    """Schema version 6: the dashboard's indexes and the workers' heartbeat table. A new
    database got some from version 1's ``create_all``, so every step checks first."""
    from sqlalchemy.schema import CreateIndex

    workers.create(conn, checkfirst=True)
    dashboard = ("ix_deliveries_delivered", "ix_attempts_started")
    for table in (deliveries, attempts):
        for index in table.indexes:
            if index.name in dashboard:
                conn.execute(CreateIndex(index, if_not_exists=True))
    for statement in _SEARCH_INDEXES:
        conn.exec_driver_sql(statement)


# Schema versions, in order. A new version appends (number, name, function): never edit one.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "events, deliveries and attempts", _initial_schema),
    (2, "PostgreSQL: the ingest in one call", _postgresql_ingest_function),
    (3, "PostgreSQL: no length limit on text Dolibarr sends", _text_columns),
    (4, "events: label, scrub rule, index by object", _objects_and_credentials),
    (5, "PostgreSQL: the ingest within the request deadline, with labels, duplicates without payload",
     _postgresql_ingest_within_deadline),
    (6, "the dashboard's indexes and the workers' heartbeat", _dashboard),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


# What went wrong with a store operation (StoreError.kind): the answer to Dolibarr, the log
# line and the metric depend on it.
UNAVAILABLE = "unavailable"  # the store cannot be reached or written: try again later (503)
TIMEOUT = "timeout"  # the request's deadline passed, waiting for a lock or the store (503)
DATA = "data"  # the store refused this event's data: trying again will not help
STORE_ERROR_KINDS = (UNAVAILABLE, TIMEOUT, DATA)

# SQLSTATEs of a PostgreSQL statement ended by statement_timeout or lock_timeout.
_PG_TIMEOUTS = {"57014", "55P03"}
# SQLite's words for a write lock it could not get within the busy timeout.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


class StoreError(Exception):
    """The store did not take an operation; ``kind`` says why (one of STORE_ERROR_KINDS)."""

    def __init__(self, message: str, kind: str = UNAVAILABLE) -> None:
        super().__init__(message)
        self.kind = kind


class DeadlinePassed(Exception):
    """The request's deadline passed before the store took the event (nothing was written)."""


def classify_error(exc: BaseException) -> str:
    """The kind of a store failure: the one place that tells an outage from bad data."""
    if isinstance(exc, (DeadlinePassed, TimeoutError)):
        return TIMEOUT
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, UnicodeError) or isinstance(exc, (DataError, IntegrityError)):
        return DATA
    if getattr(cause, "sqlstate", None) in _PG_TIMEOUTS:
        return TIMEOUT
    if isinstance(exc, OperationalError) and str(cause).startswith(_SQLITE_BUSY):
        return TIMEOUT
    return UNAVAILABLE


# What a store operation may raise besides StoreError: the driver's errors, a deadline, the
# writers' lock file (OSError), text the driver cannot encode.
_FAILURES = (SQLAlchemyError, DeadlinePassed, OSError, UnicodeError)


def _storable(value: str | None) -> str | None:
    """Text for a column: PostgreSQL's text cannot hold NUL, so NUL is written as JSON writes
    it, ``\\u0000``. Only the searchable columns go through this: the payload, JSON, already
    escapes it, and handlers get the event from the payload, exactly as it came."""
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\\u0000")
    return value


def store_error(exc: BaseException) -> StoreError:
    return StoreError(describe_error(exc), classify_error(exc))


def describe_error(exc: BaseException) -> str:
    """One line for an operator: the driver's error and its first line (disk full,
    read-only...), without SQLAlchemy's dump of the statement and its parameters."""
    cause = getattr(exc, "orig", None) or exc
    detail = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {detail[0] if detail else ''}".rstrip(": ")[:300]


def redacted_url(url: str) -> str | None:
    """A database (or Redis) URL with its password hidden; None when it cannot be parsed."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # SQLAlchemy raises several types for a malformed URL
        return None


@dataclass(frozen=True)
class IngestResult:
    status: str  # accepted | duplicate
    event_id: str
    duplicate_of: str | None = None
    deliveries: int = 0


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    plugin: str
    token: str
    attempts: int  # attempts made before this one
    reclaimed: bool
    event: Event
    started_at: float


def normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def sqlite_path(url: str) -> str | None:
    """The absolute path of an SQLite store's file; None for PostgreSQL or an in-memory database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.abspath(parsed.database)


# The busy timeout of a transaction without a deadline (the worker's, the CLI's).
SQLITE_BUSY_TIMEOUT = 30.0
# SQLite opens a file it may not write read-only, and that connection stays read-only after
# the file is writable again: a pool of them answered 503 until a restart. These errors
# count as a lost connection, so that SQLAlchemy replaces the pool's connections.
_SQLITE_STALE = ("attempt to write a readonly database", "disk I/O error", "unable to open database file",
                 "database or disk is full")


def make_engine(url: str, synchronous: str = "FULL") -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
                               pool_size=8, max_overflow=16)

        @sa_event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, record):
            # We emit BEGIN ourselves (below); pysqlite's own transaction handling would defer it.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cursor.close()
            record.info["busy_ms"] = int(SQLITE_BUSY_TIMEOUT * 1000)

        @sa_event.listens_for(engine, "begin")
        def _on_begin(conn):
            options = conn.get_execution_options()
            # A request's transaction waits for SQLite's write lock until its deadline only.
            deadline = options.get("deadline")
            busy_ms = int(SQLITE_BUSY_TIMEOUT * 1000) if deadline is None else max(
                1, int((deadline - time.monotonic()) * 1000))
            info = conn.connection.info
            if info.get("busy_ms") != busy_ms:
                conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={busy_ms}").close()
                info["busy_ms"] = busy_ms
            # IMMEDIATE takes the write lock up front: a claim or a dedup check cannot race.
            conn.exec_driver_sql("BEGIN" if options.get("readonly") else "BEGIN IMMEDIATE")

        @sa_event.listens_for(engine, "handle_error")
        def _on_error(context):
            if str(context.original_exception).startswith(_SQLITE_STALE):
                context.is_disconnect = True
                # The connections of one process share the file's shared-memory index, and
                # one opened read-only keeps it read-only for every new connection as long as
                # any connection of the process stays open: the store closes them all before
                # its next operation (Store._reopen_if_stale), not as each is next checked out
                # (a quiet pool kept some for ever).
                context.engine.dolibarr_webhooks_stale = True

        return engine
    # A server that does not answer fails the request in seconds (503), never holds a worker.
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=16,
                         connect_args={"connect_timeout": int(os.environ.get("PGCONNECT_TIMEOUT", "5"))})


def make_request_engine(url: str, deadline: float) -> Engine:
    """PostgreSQL's engine for the request path (the ingest, a quarantine): autocommit, and
    every statement, lock wait and connection attempt ended by the request deadline, so an
    answer never comes after the proxy or Dolibarr gave up. Set once per connection (a
    ``SET`` per request would cost a round trip); the ingest function narrows the lock wait
    to what is left of each request's deadline. A pool of its own: the worker's statements
    keep no timeout."""
    milliseconds = max(1, int(deadline * 1000))
    # libpq counts whole seconds, and at least 2.
    connect_timeout = max(2, min(int(os.environ.get("PGCONNECT_TIMEOUT", "5")), math.ceil(deadline)))
    engine = create_engine(normalise_url(url), pool_pre_ping=True, pool_size=8, max_overflow=16,
                           isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": connect_timeout})

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        with dbapi_conn.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {milliseconds}; SET lock_timeout = {milliseconds}")

    return engine


class WriterQueue:
    """Writers of one SQLite file take turns through ``flock`` on ``<database>.lock``.

    SQLite's busy handler sleeps 1, 2, 5, 10... ms between tries, so a writer waiting for a
    lock held 3 ms waits about 8, and under steady load keeps losing to the holder (p99 of
    the answer to Dolibarr: 399 ms). The kernel wakes a ``flock`` waiter as soon as the
    lock is released (p99: 57 ms, same CPU; measured by bench/ingest.py).

    ``flock`` has no timeout, and a request must give up at its deadline. When the lock is
    taken, a request in the main thread (gunicorn's sync workers) waits in ``flock`` itself,
    interrupted by ``SIGALRM`` at the deadline; in another thread it waits in a thread of
    its own (``_PendingLock``: starting one for each contended turn cost 0.17 ms of CPU per
    request at 16 connections), and stops waiting at the deadline. The uncontended turn
    costs one ``flock`` call, as before.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._pending: _PendingLock | None = None  # a wait a request gave up on, still running

    @contextlib.contextmanager
    def turn(self, deadline: float | None = None):
        """This process's turn; with ``deadline`` (a ``time.monotonic()`` instant),
        ``DeadlinePassed`` when it has not come by then."""
        if deadline is None:
            self._thread_lock.acquire()
        elif not self._thread_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise DeadlinePassed("waiting for this process's other writers")
        try:
            if self._fd is None or self._pid != os.getpid():  # never share a descriptor across a fork
                self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
                self._pending = None
            self._lock_by(deadline)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _lock_by(self, deadline: float | None) -> None:
        # A wait an earlier request gave up on may still run: take it over (a second flock on
        # the same descriptor would not queue behind it, and its release would be ours).
        pending, self._pending = self._pending, None
        if pending is not None and not pending.adopt():
            pending = None
        if pending is None:
            if deadline is None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if threading.current_thread() is threading.main_thread():
                    self._lock_with_alarm(deadline)
                    return
                pending = _PendingLock(self._fd)
        if pending.wait(None if deadline is None else deadline - time.monotonic()):
            return
        self._pending = pending
        raise DeadlinePassed(_QUEUE_WAIT)

    def _lock_with_alarm(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed(_QUEUE_WAIT)
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, remaining)
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except DeadlinePassed:
                # The alarm may have come just after the lock did: never keep it on a failure
                # (unlocking a lock not held does nothing).
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                raise
        finally:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


_QUEUE_WAIT = "waiting for the writers of other processes (the SQLite file's lock)"


def _alarm(_signum, _frame) -> None:
    raise DeadlinePassed(_QUEUE_WAIT)


class _PendingLock:
    """A blocking ``flock`` in a thread, that the request waiting for it may give up on: the
    lock is then released as soon as it comes, unless a later request adopts the wait."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._guard = threading.Lock()
        self._taken = threading.Event()
        self._wanted = True
        self._released = False
        threading.Thread(target=self._take, name="sqlite-writer-turn", daemon=True).start()

    def _take(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        with self._guard:
            self._taken.set()
            if not self._wanted:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._released = True

    def wait(self, timeout: float | None) -> bool:
        """True when the caller holds the lock."""
        if self._taken.wait(None if timeout is None else max(0.0, timeout)):
            return True
        with self._guard:
            if self._taken.is_set():  # came just now
                return True
            self._wanted = False
            return False

    def adopt(self) -> bool:
        """Want the lock again; False when it already came and went."""
        with self._guard:
            if self._released:
                return False
            self._wanted = True
            return True


class Store:
    def __init__(self, url: str, synchronous: str = "FULL", request_deadline: float = 10.0) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(url, synchronous)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.request_deadline = request_deadline
        # The ingest's single statement commits by itself (see _INGEST_POSTGRES), within the deadline.
        self.request_engine = make_request_engine(url, request_deadline) if self.is_postgres else None
        self._listeners: list[Callable[[], None]] = []
        sqlite_file = sqlite_path(url)
        # Touched after each commit that adds due deliveries, to wake workers of other processes.
        self.wake_file = sqlite_file + ".wake" if sqlite_file else None
        self._writers = WriterQueue(sqlite_file + ".lock") if sqlite_file else None

    @contextlib.contextmanager
    def _write(self, deadline: float | None = None):
        """A write transaction; on an SQLite file, after this process's turn in the writers' queue.
        With ``deadline`` (a ``time.monotonic()`` instant), every wait ends by then
        (``DeadlinePassed``, or SQLite's busy timeout), and a transaction still open at the
        deadline is rolled back rather than committed late."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlinePassed("before the store was reached (the request waited in a queue)")
        self._reopen_if_stale()
        with self._writers.turn(deadline) if self._writers else contextlib.nullcontext():
            with self.engine.connect() as conn:
                if deadline is not None:
                    conn.execution_options(deadline=deadline)
                with conn.begin():
                    yield conn
                    if deadline is not None and time.monotonic() >= deadline:
                        raise DeadlinePassed("the deadline passed before the commit")

    def _reopen_if_stale(self) -> None:
        """After a write met a file opened read-only (see make_engine), close every connection
        of this process, idle or not yet returned, so that the next one opens the file anew."""
        if getattr(self.engine, "dolibarr_webhooks_stale", False):
            self.engine.dolibarr_webhooks_stale = False
            self.engine.dispose()

    # -- schema -----------------------------------------------------------------
    def _readonly(self):
        self._reopen_if_stale()
        return self.engine.connect().execution_options(readonly=True)

    def schema_version(self) -> int:
        with self._readonly() as conn:
            if not self.engine.dialect.has_table(conn, "schema_migrations"):
                return 0
            return conn.execute(select(func.max(schema_migrations.c.version))).scalar() or 0

    def migrate(self) -> list[int]:
        """Bring the schema to the latest version; safe when several processes start at once."""
        applied = []
        with self._write() as conn:
            if self.is_postgres:
                conn.execute(text("SELECT pg_advisory_xact_lock(727271)"))
            metadata.create_all(conn, tables=[schema_migrations], checkfirst=True)
            done = set(conn.execute(select(schema_migrations.c.version)).scalars())
            for version, name, migration in MIGRATIONS:
                if version in done:
                    continue
                migration(conn)
                conn.execute(insert(schema_migrations).values(version=version, name=name, applied_at=time.time()))
                applied.append(version)
        return applied

    def ping(self) -> bool:
        try:
            with self._readonly() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Called after each commit that adds due deliveries (wakes an in-process worker)."""
        self._listeners.append(callback)

    def _notify(self, conn: Connection) -> None:
        if self.is_postgres:
            conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})

    def _wake(self) -> None:
        for callback in self._listeners:
            callback()
        if self.wake_file:
            # Workers of other processes watch this file (worker._CommitWatch). Its change time
            # is set after the commit: the WAL itself is written before the commit is visible.
            try:
                os.utime(self.wake_file)
            except FileNotFoundError:
                with contextlib.suppress(OSError):
                    os.close(os.open(self.wake_file, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError:
                pass  # not ours to touch: the workers still look every POLL_INTERVAL

    # -- ingest -----------------------------------------------------------------
    def ingest(self, event: Event, plugins: Iterable[str], dedup_window: float = 0,
               remote_addr: str | None = None, deadline: float | None = None,
               scrub_rule: str | None = None) -> IngestResult:
        """Store an event and its deliveries in one transaction, unless it is a duplicate (then
        a row that names the event it repeats, without the payload). With ``deadline`` (a
        ``time.monotonic()`` instant), nothing is stored unless it is committed by then.
        ``scrub_rule``: the fingerprint of the credentials rule the event went through.
        Raises ``StoreError``, whose ``kind`` tells an outage from a timeout or bad data."""
        now = time.time()
        plugins = list(plugins)
        dedup = dedup_window > 0 and not event.test
        row = dict(  # built before BEGIN: the write lock is held for the statements only
            id=event.id, source=event.source, trigger_code=_storable(event.trigger_code),
            sent_code=_storable(event.sent_code), element=_storable(event.element),
            object_id=_storable(event.object_id), ref=_storable(event.ref), entity=_storable(event.entity),
            label=_storable(event.label), scrub_rule=scrub_rule,
            received_at=event.received_at.timestamp(), body_sha256=event.body_sha256, test=event.test,
            payload=event.to_json(), remote_addr=_storable(remote_addr),
        )
        search = dict(since=row["received_at"] - dedup_window, accepted=ACCEPTED)
        try:
            if self.is_postgres:  # one statement, its own transaction
                lock_timeout = self._remaining_ms(deadline)
                with self.request_engine.connect() as conn:
                    duplicate_of = conn.execute(_INGEST_POSTGRES, dict(
                        row, **search, dedup=dedup, duplicate=DUPLICATE, pending=PENDING, now=now,
                        plugins=plugins, channel=NOTIFY_CHANNEL, lock_timeout=f"{lock_timeout}ms")).scalar()
            else:
                with self._write(deadline) as conn:
                    duplicate_of = conn.execute(_FIND_DUPLICATE, dict(row, **search)).scalar() if dedup else None
                    conn.execute(_INSERT_EVENT, dict(row, status=DUPLICATE if duplicate_of else ACCEPTED,
                                                     duplicate_of=duplicate_of, raw_body=None, error=None,
                                                     payload=None if duplicate_of else row["payload"]))
                    if plugins and not duplicate_of:
                        conn.execute(_INSERT_DELIVERY, [self._new_delivery(event.id, p, now) for p in plugins])
        except _FAILURES as exc:
            raise store_error(exc) from exc
        if duplicate_of:
            return IngestResult(DUPLICATE, event.id, duplicate_of)
        if plugins:
            self._wake()
        return IngestResult(ACCEPTED, event.id, None, len(plugins))

    def _remaining_ms(self, deadline: float | None) -> int:
        """What is left of a request's deadline, in whole milliseconds (at least 1: 0 would
        mean no timeout to PostgreSQL); ``DeadlinePassed`` when nothing is."""
        if deadline is None:
            return max(1, int(self.request_deadline * 1000))
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise DeadlinePassed("before the store was reached (the request waited in a queue)")
        return left

    @staticmethod
    def _new_delivery(event_id: str, plugin: str, now: float) -> dict[str, Any]:
        return dict(event_id=event_id, plugin=plugin, status=PENDING, attempts=0, runs=0, reclaims=0,
                    next_attempt_at=now, created_at=now, updated_at=now)

    def quarantine(self, event_id: str, raw: bytes, source: str, error: str, body_sha256: str,
                   received_at: float, remote_addr: str | None = None, deadline: float | None = None) -> None:
        """Keep an authenticated body that cannot be parsed (or stored as an event), to
        re-process after a fix. The raw bytes are kept as they came (a blob holds anything)."""
        statement = insert(events).values(
            id=event_id, source=source, trigger_code="", received_at=received_at, body_sha256=body_sha256,
            test=False, status=QUARANTINED, raw_body=raw, error=_storable(error), remote_addr=_storable(remote_addr))
        try:
            if self.is_postgres:  # one statement in autocommit, within the deadline
                self._remaining_ms(deadline)
                with self.request_engine.connect() as conn:
                    conn.execute(statement)
            else:
                with self._write(deadline) as conn:
                    conn.execute(statement)
        except _FAILURES as exc:
            raise store_error(exc) from exc

    def probe_write(self) -> str | None:
        """What a request's write meets now: None when one commits within the request deadline,
        else the error (for /ready). A real committed write, so that a read-only file, a full
        disk or a stale read-only connection shows: one row of schema_migrations, rewritten
        unchanged. It takes the writers' turn like a request (an fsync on SQLite)."""
        try:
            if self.is_postgres:
                with self.request_engine.connect() as conn:
                    conn.execute(_PROBE)
            else:
                with self._write(time.monotonic() + self.request_deadline) as conn:
                    conn.execute(_PROBE)
        except _FAILURES as exc:
            return describe_error(exc)
        return None

    def quarantined(self, event_id: str | None = None) -> list[dict[str, Any]]:
        query = select(events.c.id, events.c.source, events.c.raw_body, events.c.received_at, events.c.error,
                       events.c.body_sha256).where(events.c.status == QUARANTINED)
        if event_id:
            query = query.where(events.c.id == event_id)
        with self._readonly() as conn:
            return [dict(row._mapping) for row in conn.execute(query.order_by(events.c.received_at))]

    def accept_quarantined(self, event: Event, plugins: Iterable[str], scrub_rule: str | None = None) -> int:
        """A quarantined body now parses: store its event in place and create its deliveries."""
        now = time.time()
        plugins = list(plugins)
        with self._write() as conn:
            changed = conn.execute(update(events).where(events.c.id == event.id, events.c.status == QUARANTINED).values(
                trigger_code=_storable(event.trigger_code), sent_code=_storable(event.sent_code),
                element=_storable(event.element), object_id=_storable(event.object_id), ref=_storable(event.ref),
                entity=_storable(event.entity), test=event.test, label=_storable(event.label), scrub_rule=scrub_rule,
                status=ACCEPTED, payload=event.to_json(), raw_body=None,
                error="re-processed at %s" % time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            )).rowcount
            if changed and plugins:
                conn.execute(insert(deliveries), [self._new_delivery(event.id, p, now) for p in plugins])
                self._notify(conn)
        self._wake()
        return len(plugins) if changed else 0

    # -- the worker's side -----------------------------------------------------
    def claim(self, lanes: dict[str, int], worker: str, lease: float) -> list[Claim]:
        """Take up to ``lanes[plugin]`` due deliveries of each plugin; none runs twice at once."""
        now = time.time()
        claims: list[Claim] = []
        with self._write() as conn:
            for plugin, limit in lanes.items():
                if limit <= 0:
                    continue
                rows = conn.execute(
                    select(deliveries.c.id, deliveries.c.status, deliveries.c.attempts, deliveries.c.event_id)
                    .where(deliveries.c.plugin == plugin, _due(now))
                    .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).all()
                # The lease counts from here: getting the rows may have waited for a lock (SQLite's
                # write lock at BEGIN, a PostgreSQL table lock), and the whole lease is the holder's.
                leased_at = time.time()
                for row in rows:
                    token = secrets.token_hex(16)
                    reclaimed = row.status == RUNNING
                    conn.execute(_LEASE, dict(
                        lease_id=row.id, status=RUNNING, lease_token=token, lease_expires_at=leased_at + lease,
                        locked_by=worker, reclaimed=1 if reclaimed else 0, updated_at=leased_at,
                    ))
                    payload = conn.execute(_EVENT_PAYLOAD, {"event_id": row.event_id}).scalar()
                    claims.append(Claim(row.id, plugin, token, row.attempts, reclaimed,
                                        Event.from_json(payload), leased_at))
        return claims

    def has_due(self, plugins: Iterable[str]) -> bool:
        """A cheap read: is anything due for these plugins? (Avoids taking the write lock when idle.)"""
        now = time.time()
        plugins = list(plugins)
        if not plugins:
            return False
        with self._readonly() as conn:
            return conn.execute(select(deliveries.c.id).where(
                deliveries.c.plugin.in_(plugins), _due(now)).limit(1)).first() is not None

    def next_retry_at(self, plugins: Iterable[str]) -> float | None:
        """When the earliest retry of these plugins comes due. New deliveries and replays wake a
        PostgreSQL worker with a NOTIFY; a retry coming due does not, so the worker must not
        sleep past it."""
        plugins = list(plugins)
        if not plugins:
            return None
        with self._readonly() as conn:
            return conn.execute(_NEXT_RETRY, {"plugins": plugins, "failed": FAILED}).scalar()

    def finish(self, claim: Claim, status: str, error: str | None, next_attempt_at: float | None,
               worker: str, outcome: str | None = None, count_attempt: bool = True) -> bool:
        """Record an attempt and move the delivery on; False when the lease was lost meanwhile."""
        with self._write() as conn:
            now = time.time()  # after any wait for SQLite's write lock
            values: dict[str, Any] = dict(status=status, last_error=error, lease_token=None, lease_expires_at=None,
                                          locked_by=None, updated_at=now)
            if count_attempt:
                values["attempts"] = claim.attempts + 1
            if next_attempt_at is not None:
                values["next_attempt_at"] = next_attempt_at
            if status == DELIVERED:
                values["delivered_at"] = now
            values.update(held_id=claim.delivery_id, held_token=claim.token)
            held = conn.execute(_FINISH_HELD, values).rowcount == 1
            conn.execute(_INSERT_ATTEMPT, dict(
                delivery_id=claim.delivery_id, number=claim.attempts + 1, worker=worker,
                started_at=claim.started_at, finished_at=now,
                outcome=(outcome or status) if held else "late", error=error,
                duration_ms=round((now - claim.started_at) * 1000, 3),
            ))
        return held

    # -- inspection -------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        now = time.time()
        with self._readonly() as conn:
            by_event = dict(conn.execute(select(events.c.status, func.count()).group_by(events.c.status)).all())
            rows = conn.execute(select(deliveries.c.plugin, deliveries.c.status, func.count())
                                .group_by(deliveries.c.plugin, deliveries.c.status)).all()
            oldest = conn.execute(select(func.min(deliveries.c.created_at))
                                  .where(deliveries.c.status.in_((PENDING, RUNNING, FAILED)))).scalar()
            reclaims = conn.execute(select(func.coalesce(func.sum(deliveries.c.reclaims), 0))).scalar()
            late = conn.execute(select(func.count()).where(attempts.c.outcome == "late")).scalar()
        totals = {state: 0 for state in DELIVERY_STATES}
        plugins: dict[str, dict[str, int]] = {}
        for plugin, state, count in rows:
            totals[state] = totals.get(state, 0) + count
            plugins.setdefault(plugin, {s: 0 for s in DELIVERY_STATES})[state] = count
        return {
            "events": by_event.get(ACCEPTED, 0),
            "duplicates": by_event.get(DUPLICATE, 0),
            "quarantined": by_event.get(QUARANTINED, 0),
            "deliveries": totals,
            "plugins": plugins,
            "oldest_pending_age": round(now - oldest, 3) if oldest else None,
            "duplicate_runs": int(reclaims or 0),
            "late_results": int(late or 0),
        }

    def list_deliveries(self, status: str | None = None, plugin: str | None = None, code: str | None = None,
                        since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = (select(deliveries.c.id, deliveries.c.event_id, deliveries.c.plugin, deliveries.c.status,
                        deliveries.c.attempts, deliveries.c.next_attempt_at, deliveries.c.last_error,
                        deliveries.c.updated_at, events.c.trigger_code, events.c.ref, events.c.label,
                        events.c.received_at)
                 .join(events, events.c.id == deliveries.c.event_id))
        if status:
            query = query.where(deliveries.c.status == status)
        if plugin:
            query = query.where(deliveries.c.plugin == plugin)
        if code:
            query = query.where(events.c.trigger_code == code)
        if since is not None:
            query = query.where(events.c.received_at >= since)
        query = query.order_by(events.c.received_at.desc(), deliveries.c.id).limit(limit)
        with self._readonly() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def show(self, event_id: str) -> dict[str, Any] | None:
        with self._readonly() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).first()
            if row is None:
                return None
            data = dict(row._mapping)
            raw = data.pop("raw_body")
            data["raw_body_size"] = len(raw) if raw is not None else None
            data["payload"] = fastjson.loads(data["payload"]) if data["payload"] else None
            data["deliveries"] = []
            for d in conn.execute(select(deliveries).where(deliveries.c.event_id == event_id)
                                  .order_by(deliveries.c.id)):
                item = dict(d._mapping)
                item.pop("lease_token")
                item["attempts_log"] = [dict(a._mapping) for a in conn.execute(
                    select(attempts).where(attempts.c.delivery_id == d.id).order_by(attempts.c.id))]
                data["deliveries"].append(item)
        return data

    def object_events(self, element: str, object_id: str, source: str | None = None,
                      limit: int = 1000) -> list[dict[str, Any]]:
        """Every event of one object (its type and Dolibarr id), oldest first."""
        query = (select(events.c.id, events.c.source, events.c.trigger_code, events.c.label, events.c.ref,
                        events.c.status, events.c.duplicate_of, events.c.received_at)
                 .where(events.c.element == element, events.c.object_id == str(object_id)))
        if source:
            query = query.where(events.c.source == source)
        with self._readonly() as conn:
            return [dict(row._mapping) for row in conn.execute(query.order_by(events.c.received_at).limit(limit))]

    # -- credentials ------------------------------------------------------------
    def scrub_rules_in_use(self) -> set[str | None]:
        """The scrub rules events were stored under (None: before credentials were masked).
        A loose index scan: one index look-up per distinct rule, whatever the store's size."""
        with self._readonly() as conn:
            rules: set[str | None] = set(conn.execute(_DISTINCT_RULES).scalars())
            if conn.execute(select(events.c.id).where(events.c.scrub_rule.is_(None)).limit(1)).first():
                rules.add(None)
        return rules

    def _stale(self, expected: dict[str, str], default: str):
        """Events whose rule is not the one expected for their source (``default`` for a source
        no longer configured); each term reads a range of ix_events_scrub_rule, so a store
        whose events all follow the current rule answers at once."""
        terms = []
        for rule in self.scrub_rules_in_use():
            if rule is None:
                terms.append(events.c.scrub_rule.is_(None))
                continue
            expecting = [s for s, fp in expected.items() if fp == rule]
            others = [s for s, fp in expected.items() if fp != rule]
            if rule == default:
                if others:
                    terms.append(and_(events.c.scrub_rule == rule, events.c.source.in_(others)))
            else:
                terms.append(and_(events.c.scrub_rule == rule, events.c.source.not_in(expecting))
                             if expecting else events.c.scrub_rule == rule)
        return or_(*terms) if terms else None

    def count_stale(self, expected: dict[str, str], default: str) -> int:
        """How many events were scrubbed under another rule than their source's (or none)."""
        stale = self._stale(expected, default)
        if stale is None:
            return 0
        with self._readonly() as conn:
            return conn.execute(select(func.count()).select_from(events).where(stale)).scalar() or 0

    def rescrub(self, scrubber_for: Callable[[str], Any], expected: dict[str, str], default: str,
                batch: int = 200) -> dict[str, int]:
        """Scrub again, under today's rule, every event stored under another rule (or none):
        payloads and quarantined bodies rewritten with their credentials masked, labels given
        to events stored before labels existed. Returns what was read and what was changed."""
        from .labels import object_label

        done = {"read": 0, "changed": 0}
        stale = self._stale(expected, default)
        while stale is not None:
            with self._write() as conn:
                rows = conn.execute(select(events.c.id, events.c.source, events.c.trigger_code, events.c.payload,
                                           events.c.raw_body, events.c.label).where(stale).limit(batch)).all()
                for row in rows:
                    scrubber = scrubber_for(row.source)
                    values: dict[str, Any] = {"scrub_rule": scrubber.fingerprint}
                    if row.payload:
                        stored = fastjson.loads(row.payload)
                        scrubbed = scrubber.scrub(stored)
                        if isinstance(scrubbed.get("object"), dict) and not row.label:
                            scrubbed["label"] = object_label(row.trigger_code, scrubbed["object"])
                            values["label"] = scrubbed["label"]
                        if scrubbed != stored:
                            values["payload"] = fastjson.dumps(scrubbed)
                    if row.raw_body:
                        raw = scrubber.scrub_raw(row.raw_body)
                        if raw != row.raw_body:
                            values["raw_body"] = raw
                    done["changed"] += "payload" in values or "raw_body" in values
                    conn.execute(update(events).where(events.c.id == row.id).values(**values))
            done["read"] += len(rows)
            if len(rows) < batch:
                break
        return done

    def replay(self, event_id: str | None = None, statuses: Iterable[str] = (), since: float | None = None,
               plugin: str | None = None, handlers: Callable[[str], list[str]] | None = None) -> int:
        """Make deliveries due now with a fresh attempt budget. With an event id and a plugin that
        never had a delivery for it (installed later), the delivery is created."""
        now = time.time()
        with self._write() as conn:
            query = update(deliveries).where(deliveries.c.status != RUNNING)
            if event_id:
                query = query.where(deliveries.c.event_id == event_id)
            statuses = list(statuses)
            if statuses:
                query = query.where(deliveries.c.status.in_(statuses))
            if plugin:
                query = query.where(deliveries.c.plugin == plugin)
            if since is not None:
                query = query.where(deliveries.c.event_id.in_(
                    select(events.c.id).where(events.c.received_at >= since)))
            count = conn.execute(query.values(status=PENDING, attempts=0, next_attempt_at=now, last_error=None,
                                              updated_at=now)).rowcount
            if event_id and plugin and not count:
                exists = conn.execute(select(events.c.id).where(events.c.id == event_id,
                                                                events.c.status == ACCEPTED)).scalar()
                has = conn.execute(select(deliveries.c.id).where(deliveries.c.event_id == event_id,
                                                                 deliveries.c.plugin == plugin)).scalar()
                if exists and not has:
                    conn.execute(insert(deliveries).values(**self._new_delivery(event_id, plugin, now)))
                    count = 1
            if count:
                self._notify(conn)
        if count:
            self._wake()
        return count

    def purge(self, older_than: float, include_unfinished: bool = False) -> int:
        """Delete events older than ``older_than`` seconds whose deliveries are all delivered
        (or, with ``include_unfinished``, whatever their state). Returns the number of events."""
        cutoff = time.time() - older_than
        with self._write() as conn:
            old = select(events.c.id).where(events.c.received_at < cutoff)
            if not include_unfinished:
                unfinished = select(deliveries.c.event_id).where(deliveries.c.status != DELIVERED)
                old = old.where(events.c.id.not_in(unfinished), events.c.status != QUARANTINED)
            ids = list(conn.execute(old).scalars())
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                doomed = select(deliveries.c.id).where(deliveries.c.event_id.in_(chunk))
                conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(doomed)))
                conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(chunk)))
                conn.execute(delete(events).where(events.c.id.in_(chunk)))
        return len(ids)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.request_engine is not None:
            self.request_engine.dispose()
