"""The store's schema: its tables, the states of events and deliveries, and the migrations
that bring a database to ``SCHEMA_VERSION`` (PostgreSQL's ingest function among them).

SQLAlchemy Core over SQLite (the embedded default, WAL) or PostgreSQL (several hosts): one
schema, one set of queries.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlalchemy import (BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, LargeBinary, MetaData,
                        String, Table, Text, UniqueConstraint, literal_column)
from sqlalchemy.engine import Connection

from ..ids import event_id_floor

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
# PostgreSQL's ``stats`` counts the events after its fold horizon by status, in an index-only
# scan of ix_events_status (version 11). SQLite's reads its tallies (version 9): there the index
# served only the quarantined events, and was one more B-tree, over a page of log per commit,
# that every ingest wrote. SQLite indexes the quarantined events alone (version 12); a query
# uses the partial index with this literal condition in its WHERE.
QUARANTINED_ONLY = events.c.status == literal_column(f"'{QUARANTINED}'")
Index("ix_events_status", events.c.status).ddl_if(dialect="postgresql")
Index("ix_events_quarantined", events.c.received_at, sqlite_where=QUARANTINED_ONLY).ddl_if(dialect="sqlite")

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
# The worker's claim reads each state's due deliveries of a plugin in this order, the first
# few only (store.queue._CLAIM); the id last, as its ORDER BY's tie-break (version 13).
Index("ix_deliveries_due", deliveries.c.plugin, deliveries.c.status, deliveries.c.next_attempt_at, deliveries.c.id)
Index("ix_deliveries_status", deliveries.c.status, deliveries.c.next_attempt_at)
# Every lookup by event goes through uq_deliveries_event_plugin, which begins with event_id
# (version 8 dropped ix_deliveries_event, a second copy of that column written at each ingest).
# The dashboard's latency over 24 h (version 6) reads delivered deliveries only: the pending
# ones an ingest adds stay out of the index (partial since version 8).
_DELIVERED = deliveries.c.delivered_at.isnot(None)
Index("ix_deliveries_delivered", deliveries.c.delivered_at, sqlite_where=_DELIVERED, postgresql_where=_DELIVERED)

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

# What ``stats`` counts without reading every row (schema version 9): the delivered and dead
# deliveries by plugin and, on SQLite, the events by status: the rows that pile up until
# retention (or an operator) purges them. Triggers keep them in the transaction of each
# change, whoever makes it (an ingest, the worker, an operator's command, a previous
# release). A count is the sum of its shards: PostgreSQL writes the shard of its backend, so
# that concurrent transactions do not queue behind one row's lock until each other's commit;
# SQLite has one writer at a time and one shard. PostgreSQL does not tally its events as they
# are written: the upsert at each ingest cost 0.87x the requests a second at 16 connections
# (issue #15, bench/HISTORY.rst), where SQLite pays a page of log per commit, shared by a
# batch. Its worker folds them in instead, up to a horizon (version 11, ``HORIZON``).
tallies = Table(
    "tallies", metadata,
    Column("subject", String(20), primary_key=True),  # "events" or "deliveries"
    Column("plugin", String(100), primary_key=True),  # "" for events
    Column("status", String(20), primary_key=True),
    Column("shard", Integer, primary_key=True),
    Column("count", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)
TALLY_SHARDS = 64
_BACKEND_SHARD = f"mod(pg_backend_pid(), {TALLY_SHARDS})"  # PostgreSQL's shard of a tally

# Reclaimed deliveries and late results are rare: stats sums them from these partial indexes
# (version 9) instead of reading every delivery and every attempt.
# Literals, not parameters: a planner uses a partial index only for a query whose WHERE it can
# see implies the index's.
RECLAIMED = deliveries.c.reclaims > literal_column("0")
Index("ix_deliveries_reclaimed", deliveries.c.reclaims, sqlite_where=RECLAIMED, postgresql_where=RECLAIMED)
LATE = attempts.c.outcome == literal_column("'late'")
Index("ix_attempts_late", attempts.c.outcome, sqlite_where=LATE, postgresql_where=LATE)

# Dead deliveries pile up until an operator replays or purges them: ``deliveries --status
# dead`` read and sorted them all (14 ms for 1,000 at 1,000,000 events). It walks this index
# from its end instead (version 10), in the listing's order. No ingest writes it: a delivery
# dies in the worker.
DEAD_ONLY = deliveries.c.status == literal_column("'dead'")
Index("ix_deliveries_dead", deliveries.c.event_id, deliveries.c.plugin,
      sqlite_where=DEAD_ONLY, postgresql_where=DEAD_ONLY)

schema_migrations = Table(
    "schema_migrations", metadata,
    Column("version", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("applied_at", Float, nullable=False),
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


def storable(value: str | None) -> str | None:
    """Text for a column: PostgreSQL's text cannot hold NUL, so NUL is written as JSON writes
    it, ``\\u0000``. The searchable columns and a failure's text go through this, and so does
    every id, name or term a lookup compares with them (an id from a URL may hold a NUL). The
    payload, JSON, escapes it already, and handlers get the event from the payload, exactly
    as it came."""
    if value is not None and "\x00" in value:
        return value.replace("\x00", "\\u0000")
    return value


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


def _create_indexes(conn: Connection, *names: str) -> None:
    """The indexes of these names, unless there already (a new database has every index)."""
    from sqlalchemy.schema import CreateIndex

    for table in metadata.sorted_tables:
        for index in table.indexes:
            if index.name in names:
                conn.execute(CreateIndex(index, if_not_exists=True))


def _dashboard(conn: Connection) -> None:
    """Schema version 6: the dashboard's indexes and the workers' heartbeat table. A new
    database got some from version 1's ``create_all``, so every step checks first."""
    workers.create(conn, checkfirst=True)
    _create_indexes(conn, "ix_deliveries_delivered", "ix_attempts_started")
    for statement in _SEARCH_INDEXES:
        conn.exec_driver_sql(statement)


# Schema versions, in order. A new version appends (number, name, function): never edit one.
def _payload_lz4(conn: Connection) -> None:
    """Schema version 7: PostgreSQL compresses each new payload with lz4 instead of pglz. A
    15.6 KB invoice: 0.31 against 0.55 ms a single INSERT, 4.2 against 8.4 KB stored (issue
    #15: the server's CPU was a third of the ingest's on a 2-core machine). Rows already
    stored keep their compression; reading either needs nothing. A server built without lz4,
    or older than PostgreSQL 14, keeps pglz."""
    if conn.dialect.name != "postgresql":
        return
    supported = conn.exec_driver_sql(
        "SELECT current_setting('server_version_num')::int >= 140000 "
        "AND EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
        "AND 'lz4' = ANY(enumvals))").scalar()
    if supported:
        conn.exec_driver_sql("ALTER TABLE events ALTER COLUMN payload SET COMPRESSION lz4")


def _lighter_ingest(conn: Connection) -> None:
    """Schema version 8: two fewer indexes written by each ingest (issue #15). Every index an
    INSERT touches costs SQLite a page of log per commit, and the ingest touched 16 B-trees:
    ix_deliveries_event repeated the first column of the unique (event_id, plugin) index, and
    ix_deliveries_delivered held every pending delivery under NULL, which the worker then moved
    when it delivered. A new database got the lighter ones from version 1's ``create_all``:
    each step checks first."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_deliveries_event")
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_deliveries_delivered")
    _create_indexes(conn, "ix_deliveries_delivered")


def _claim_in_order(conn: Connection) -> None:
    """Schema version 13: ix_deliveries_due ends with the id, so that the claim's order (due
    time, then id) is the index's and a claim reads the first due deliveries of each state
    only. Without it PostgreSQL read and sorted every due delivery of the plugin at each claim:
    2 ms a claim behind a backlog of 1,000, 22 ms behind 40,000 (issue #15). SQLite's indexes
    end with the rowid, the id, already; its index is rebuilt too, so that every store has the
    one a new store gets."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_deliveries_due")
    _create_indexes(conn, "ix_deliveries_due")


def _search_in_code_point_order(conn: Connection) -> None:
    """Schema version 14, PostgreSQL: the dashboard's prefix search on references and labels
    in code point order (``COLLATE "C"``), whatever the database's collation. Its range (from
    "fa-0009" up to "fa-000:") held nothing in a collation that sorts ":" before "9" (glibc's
    en_US.UTF-8, the usual one of a Debian or Ubuntu cluster, and ICU's en-US), so a search
    for a reference ending in 9 found no event. SQLite compares code points already."""
    if conn.dialect.name != "postgresql":
        return
    for column in ("ref", "label"):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_events_{column}_search")
        conn.exec_driver_sql(f'CREATE INDEX ix_events_{column}_search ON events ((lower({column}) COLLATE "C"))')


# The deliveries tallied: those done with, for good or until a replay. The others are the
# queue: few, and counted through ix_deliveries_status.
TALLIED_DELIVERIES = (DELIVERED, DEAD)
_DONE = "status IN ('delivered', 'dead')"

# The changes each trigger tallies: (table, operation, the condition, then for each row the
# (row, sign) pairs it counts). Events count whatever their status; deliveries once done.
_TALLIED: tuple[tuple[str, str, str | None, list[tuple[str, int]]], ...] = (
    ("events", "INSERT", None, [("NEW", 1)]),
    ("events", "DELETE", None, [("OLD", -1)]),
    ("events", "UPDATE OF status", "OLD.status <> NEW.status", [("OLD", -1), ("NEW", 1)]),
    ("deliveries", "INSERT", f"NEW.{_DONE}", [("NEW", 1)]),
    ("deliveries", "DELETE", f"OLD.{_DONE}", [("OLD", -1)]),
    ("deliveries", "UPDATE OF status", f"OLD.status <> NEW.status AND (OLD.{_DONE} OR NEW.{_DONE})",
     [("OLD", -1), ("NEW", 1)]),
)


def _added_to_tallies(rows: str) -> str:
    """The statement adding ``rows`` (subject, plugin, status, shard, count) to the tallies."""
    return (f"INSERT INTO tallies (subject, plugin, status, shard, count) {rows} "
            "ON CONFLICT (subject, plugin, status, shard) DO UPDATE SET count = tallies.count + excluded.count")


def _tally(table: str, row: str, sign: int, shard: str) -> str:
    """The statement adding ``sign`` to the tally of ``row`` (OLD or NEW) of ``table``; in an
    UPDATE's trigger, only for a delivery whose side of the change is done with."""
    plugin = f"{row}.plugin" if table == "deliveries" else "''"
    only = f" WHERE {row}.{_DONE}" if table == "deliveries" else ""
    return _added_to_tallies(f"SELECT '{table}', {plugin}, {row}.status, {shard}, {sign}{only}") + ";"


def _tallied(postgres: bool):
    """The triggers of this database: PostgreSQL's events are folded in by its worker instead
    (version 11)."""
    return [change for change in _TALLIED if not (postgres and change[0] == "events")]


def _tallies(conn: Connection) -> None:
    """Schema version 9: the tallies behind ``stats`` (see ``tallies``), counted once from the
    rows already stored, then kept by triggers, and the partial indexes of the rare counts.
    The triggers exist before the count, in the same transaction: PostgreSQL's CREATE TRIGGER
    waits for the transactions writing the table and holds off new ones until the commit, so
    that each row is counted once, by the count or by a trigger (SQLite: one writer). Run
    again (a store taken back to an older version by hand), it replaces the triggers and
    counts again."""
    postgres = conn.dialect.name == "postgresql"
    tallies.create(conn, checkfirst=True)
    _create_indexes(conn, "ix_deliveries_reclaimed", "ix_attempts_late")
    for table, operation, condition, changes in _tallied(postgres):
        name = f"tally_{table}_{operation.split()[0].lower()}"
        if postgres:
            body = "\n    ".join(_tally(table, row, sign, _BACKEND_SHARD) for row, sign in changes)
            conn.exec_driver_sql(f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {body}
    RETURN NULL;
END
$$""")
            when = f"WHEN ({condition}) " if condition else ""
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            conn.exec_driver_sql(f"CREATE TRIGGER {name} AFTER {operation} ON {table} FOR EACH ROW "
                                 f"{when}EXECUTE PROCEDURE {name}()")
        else:
            body = " ".join(_tally(table, row, sign, "0") for row, sign in changes)
            when = f"WHEN {condition} " if condition else ""
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE TRIGGER {name} AFTER {operation} ON {table} FOR EACH ROW "
                                 f"{when}BEGIN {body} END")
    recounted = ", ".join(sorted({f"'{table}'" for table, *_ in _tallied(postgres)}))
    conn.exec_driver_sql(f"DELETE FROM tallies WHERE subject IN ({recounted})")
    if not postgres:
        conn.exec_driver_sql(_added_to_tallies("SELECT 'events', '', status, 0, count(*) FROM events GROUP BY status"))
    conn.exec_driver_sql(_added_to_tallies(f"SELECT 'deliveries', plugin, status, 0, count(*) FROM deliveries "
                                           f"WHERE {_DONE} GROUP BY plugin, status"))


def _dead_list(conn: Connection) -> None:
    """Schema version 10: the dead deliveries listed without reading them all."""
    _create_indexes(conn, "ix_deliveries_dead")


def _sqlite_quarantined_only(conn: Connection) -> None:
    """Schema version 12, SQLite: ix_events_status, which every ingest wrote, gives way to an
    index of the quarantined events only (see ``QUARANTINED_ONLY``). PostgreSQL keeps it."""
    if conn.dialect.name != "sqlite":
        return
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_events_status")
    _create_indexes(conn, "ix_events_quarantined")


# PostgreSQL's events are folded into the tallies up to a horizon (version 11), which the
# worker moves forward; ``stats`` counts the events after it. An ingest only inserts, above
# the horizon: nothing of this is on the request path. The horizon is stored in the tallies,
# as the milliseconds of the event ids below it (``ids.event_id_floor``), so that it goes
# with the counts it bounds.
HORIZON = "horizon"
# How far behind now the horizon is moved (``Store.fold_events``): an event's id is made at its
# receipt and stored within its request's deadline (under Dolibarr's 30 s), so none can
# appear below the horizon once it has passed; the rest covers the clocks of several hosts a
# little apart.
FOLD_MARGIN = 120.0
_HORIZON_ID = "'evt_' || lpad(to_hex(count), 12, '0')"  # ids.event_id_floor, in SQL


def _fold_trigger(operation: str, transitions: list[tuple[str, int]]) -> str:
    """The function of the trigger that tallies the events an ``operation`` statement changed
    below the horizon. It reads the horizon FOR SHARE: a fold moving it waits for this
    transaction, and this statement for a fold, so that each event is counted by one of them."""
    changed = " UNION ALL ".join(f"SELECT status, {sign} AS n FROM {rows} WHERE id < horizon"
                                 for rows, sign in transitions)
    return f"""
CREATE OR REPLACE FUNCTION fold_events_{operation.lower()}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    horizon text;
BEGIN
    SELECT {_HORIZON_ID} INTO horizon FROM tallies WHERE subject = '{HORIZON}' FOR SHARE;
    IF horizon IS NOT NULL THEN
        {_added_to_tallies(f"SELECT 'events', '', status, {_BACKEND_SHARD}, sum(n) FROM ({changed}) AS changed "
                           "GROUP BY status HAVING sum(n) <> 0")};
    END IF;
    RETURN NULL;
END
$$"""


def fold_events(conn: Connection, until_ms: int, again: bool = False) -> None:
    """PostgreSQL: the events with ids below ``until_ms`` (``ids.event_id_floor``) and above
    the horizon, counted into the tallies, and the horizon moved there. ``again``: from no
    horizon, as if none had been counted."""
    if again:
        conn.exec_driver_sql(f"DELETE FROM tallies WHERE subject IN ('events', '{HORIZON}')")
    conn.exec_driver_sql(f"INSERT INTO tallies (subject, plugin, status, shard, count) VALUES "
                         f"('{HORIZON}', '', '', 0, 0) ON CONFLICT DO NOTHING")
    below = conn.exec_driver_sql(f"SELECT count FROM tallies WHERE subject = '{HORIZON}' FOR UPDATE").scalar()
    if until_ms <= below:
        return
    conn.exec_driver_sql(
        _added_to_tallies("SELECT 'events', '', status, 0, count(*) FROM events "
                          "WHERE id >= %(low)s AND id < %(high)s GROUP BY status"),
        {"low": event_id_floor(below), "high": event_id_floor(until_ms)})
    conn.exec_driver_sql(f"UPDATE tallies SET count = %(until)s WHERE subject = '{HORIZON}'", {"until": until_ms})


def _folded_events(conn: Connection) -> None:
    """Schema version 11, PostgreSQL: its events' tallies, up to a horizon (see ``HORIZON``),
    kept true below it by statement-level triggers on UPDATE and DELETE, which read the rows
    each statement changed once (a purge deletes thousands). The events already stored are
    counted once here, as the worker will every minute; run again, it counts them again."""
    if conn.dialect.name != "postgresql":
        return
    for operation, references, transitions in (
            ("DELETE", "OLD TABLE AS old_rows", [("old_rows", -1)]),
            ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", [("old_rows", -1), ("new_rows", 1)])):
        name = f"fold_events_{operation.lower()}"
        conn.exec_driver_sql(_fold_trigger(operation, transitions))
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON events")
        conn.exec_driver_sql(f"CREATE TRIGGER {name} AFTER {operation} ON events REFERENCING {references} "
                             f"FOR EACH STATEMENT EXECUTE PROCEDURE {name}()")
    fold_events(conn, int((time.time() - FOLD_MARGIN) * 1000), again=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "events, deliveries and attempts", _initial_schema),
    (2, "PostgreSQL: the ingest in one call", _postgresql_ingest_function),
    (3, "PostgreSQL: no length limit on text Dolibarr sends", _text_columns),
    (4, "events: label, scrub rule, index by object", _objects_and_credentials),
    (5, "PostgreSQL: the ingest within the request deadline, with labels, duplicates without payload",
     _postgresql_ingest_within_deadline),
    (6, "the dashboard's indexes and the workers' heartbeat", _dashboard),
    (7, "PostgreSQL: payloads compressed with lz4", _payload_lz4),
    (8, "deliveries: two fewer indexes written by each ingest", _lighter_ingest),
    (9, "tallies for stats, kept by triggers", _tallies),
    (10, "deliveries: the dead ones indexed, newest event first", _dead_list),
    (11, "PostgreSQL: events tallied up to a horizon the worker moves", _folded_events),
    (12, "SQLite: only the quarantined events indexed by status", _sqlite_quarantined_only),
    (13, "deliveries: the claim reads the due ones in the index's order", _claim_in_order),
    (14, "PostgreSQL: the dashboard's search in code point order, whatever the collation",
     _search_in_code_point_order),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def schema_problem(version: int) -> str | None:
    """What keeps a database at schema ``version`` from serving this release, in the words
    ``/ready`` and ``check`` both use; None when it is current."""
    if version < SCHEMA_VERSION:
        return f"schema version {version}, expected {SCHEMA_VERSION}"
    if version > SCHEMA_VERSION:
        return f"schema version {version} is newer than this release ({SCHEMA_VERSION})"
    return None
