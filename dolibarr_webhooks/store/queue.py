"""The queue: events in, one delivery per plugin and event, claims, outcomes.

Claims are safe across processes and hosts: on SQLite every write transaction is ``BEGIN
IMMEDIATE`` (one writer at a time, so a claim is atomic), on PostgreSQL ``FOR UPDATE SKIP
LOCKED``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import bindparam, func, insert, literal_column, select, text, union_all, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..database_url import normalise_url
from ..events import Event
from ..labels import encodable
from . import payloads, postgres_fast, sqlite_fast
from .engine import make_engine, make_request_engine, reopen_if_stale, sqlite_folder_problem, sqlite_path
from .failures import FAILURES, DeadlinePassed, StoreError, store_error
from .inspect import Inspection
from .schema import (ACCEPTED, DELIVERED, DUPLICATE, FAILED, MIGRATIONS, NOTIFY_CHANNEL, PENDING, QUARANTINED,
                     QUARANTINED_ONLY, RUNNING, attempts, deliveries, events, metadata, schema_migrations,
                     storable)
from .batch import PostgresCommitter, SQLiteCommitter
from .checkpoint import LogCheckpoints
from .group_commit import SharedSync
from .writers import WriterQueue

# The ingest path's statements, built once: SQLAlchemy caches the compiled form of a reused
# statement, and building one per request was the costliest step of the request (bench/HISTORY.rst).
_INSERT_EVENT = insert(events)
_INSERT_DELIVERY = insert(deliveries)
# Through ix_events_quarantined on SQLite (its condition, a literal, in the WHERE).
_QUARANTINED_LIST = (select(events.c.id, events.c.source, events.c.raw_body, events.c.received_at, events.c.error,
                            events.c.body_sha256).where(QUARANTINED_ONLY).order_by(events.c.received_at))


def _state(state: str):
    """A state as the SQL literal ``'pending'``, written in the statement, not bound. SQLite
    plans a statement again at every run when a parameter is compared with a column that a
    partial index's condition names (the state: ix_events_quarantined, ix_deliveries_dead),
    since the plan depends on the value: the duplicate search of each ingest took 45 us
    instead of 11 (issue #15, ``bench/phases.py``). The claim's statements run on the
    driver's cursor (``Store._execute``), which takes plain parameters only."""
    return literal_column(f"'{state}'")


_FIND_DUPLICATE = select(events.c.id).where(
    events.c.source == bindparam("source"),
    events.c.body_sha256 == bindparam("body_sha256"),
    events.c.trigger_code == bindparam("trigger_code"),
    events.c.object_id.is_not_distinct_from(bindparam("object_id")),
    events.c.received_at >= bindparam("since"),
    events.c.status == _state(ACCEPTED),
).limit(1)

# On PostgreSQL every statement is a round trip, and each costs the web process more CPU in
# psycopg than the statement costs the server. The ingest is therefore one call, in
# autocommit, of a database function: the duplicate lock, the duplicate search, the event,
# its deliveries and the workers' wake-up, in one round trip instead of four (BEGIN, lock,
# statement, COMMIT); bench/HISTORY.rst has the figures. Its definition is the latest migration
# that creates dolibarr_webhooks_ingest (schema version 2, then 5).
_INGEST_POSTGRES = text(
    "SELECT dolibarr_webhooks_ingest(:id, :source, :trigger_code, :sent_code, :element, :object_id, :ref, :entity, "
    ":label, :scrub_rule, :received_at, :body_sha256, :test, :payload, :remote_addr, "
    ":dedup, :since, :now, :plugins, :accepted, :duplicate, :pending, :channel, :lock_timeout)"
)


_PROBE = update(schema_migrations).where(
    schema_migrations.c.version == select(func.max(schema_migrations.c.version)).scalar_subquery()
).values(applied_at=schema_migrations.c.applied_at)

# The worker's per-delivery statements, built once for the same reason. The SET columns of
# _FINISH_HELD are the keys given at execution, other than its WHERE parameters.
_LEASE = update(deliveries).where(deliveries.c.id == bindparam("lease_id")).values(
    runs=deliveries.c.runs + 1, reclaims=deliveries.c.reclaims + bindparam("reclaimed"))
_LEASE_SET = ("status", "lease_token", "lease_expires_at", "locked_by", "updated_at")  # with runs and reclaims
_FINISH_HELD = update(deliveries).where(deliveries.c.id == bindparam("held_id"),
                                        deliveries.c.lease_token == bindparam("held_token"))
_INSERT_ATTEMPT = insert(attempts)
_NEXT_RETRY = select(func.min(deliveries.c.next_attempt_at)).where(
    deliveries.c.status == _state(FAILED), deliveries.c.plugin.in_(bindparam("plugins", expanding=True)))


# When a delivery in each state may be claimed: waiting and due, or running on a lease that
# expired. ``now``: the parameter bound when the statement runs (_CLAIM, _HAS_DUE).
_DUE_WHEN = {
    PENDING: lambda now: deliveries.c.next_attempt_at <= now,
    FAILED: lambda now: deliveries.c.next_attempt_at <= now,
    RUNNING: lambda now: deliveries.c.lease_expires_at < now,
}


def _due_in(state: str, plugin):
    """The conditions of a due delivery in ``state`` of the ``plugin`` (a condition on the
    column), each a prefix of ix_deliveries_due: plugin, state, then due time."""
    return plugin, deliveries.c.status == _state(state), _DUE_WHEN[state](bindparam("now"))


# The worker's claim and its look, built once as well: building them at each claim (the
# expression, then SQLAlchemy's cache key of it) cost the worker more CPU than running them
# (issue #15). The claim reads each event's payload with its delivery, and leases the rows it
# got in one call (``Store.claim``): on PostgreSQL a round trip each, where a payload and a
# lease per delivery were two.
#
# Both read each state's due deliveries through ix_deliveries_due, one state at a time: the
# claim in the index's order (plugin, state, due time, id), ``limit`` at most of each, then
# the first of those; the look the first of any. A backlog, due or waiting for a retry, costs
# them a few index entries. Asked for the three states at once, PostgreSQL read every due
# delivery of the plugin at each claim and sorted them (2 ms a claim behind a backlog of
# 1,000, 22 ms behind 40,000), and every delivery waiting for a retry at each idle look
# (schema version 13). A row the claim locked and did not take is free again at its commit.
def _claimable(state: str):
    return (select(deliveries.c.id, deliveries.c.status, deliveries.c.attempts, deliveries.c.event_id,
                   deliveries.c.next_attempt_at)
            .where(*_due_in(state, deliveries.c.plugin == bindparam("plugin")))
            .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            .cte(f"due_{state}"))


_DUE_FIRST = union_all(*(select(*_claimable(state).c) for state in _DUE_WHEN)).subquery("due")
# The payloads of the deliveries taken only: joined after the limit, not before the sort.
_CLAIM = (select(_DUE_FIRST.c.id, _DUE_FIRST.c.status, _DUE_FIRST.c.attempts, events.c.payload)
          .select_from(_DUE_FIRST.join(events, events.c.id == _DUE_FIRST.c.event_id))
          .order_by(_DUE_FIRST.c.next_attempt_at, _DUE_FIRST.c.id)
          .limit(bindparam("limit")))
_ANY_DUE = [select(deliveries.c.id)
            .where(*_due_in(state, deliveries.c.plugin.in_(bindparam("plugins", expanding=True))))
            .limit(1).cte(f"any_{state}") for state in _DUE_WHEN]
_HAS_DUE = select(union_all(*(select(part.c.id) for part in _ANY_DUE)).subquery("due").c.id).limit(1)


@dataclass(frozen=True)
class IngestResult:
    status: str  # accepted | duplicate
    event_id: str
    duplicate_of: str | None = None
    deliveries: int = 0


def _ingested(event_id: str, duplicate_of: str | None, plugins: list[str]) -> IngestResult:
    if duplicate_of:
        return IngestResult(DUPLICATE, event_id, duplicate_of)
    return IngestResult(ACCEPTED, event_id, None, len(plugins))


@dataclass(frozen=True)
class Claim:
    delivery_id: int
    plugin: str
    token: str
    attempts: int  # attempts made before this one
    reclaimed: bool
    event: Event
    started_at: float


class Store(Inspection):
    """The durable store of one database; ``Inspection`` adds the operators' side."""

    def __init__(self, url: str, synchronous: str = "FULL", request_deadline: float = 10.0,
                 ping_every_checkout: bool = True) -> None:
        self.url = normalise_url(url)
        sqlite_file = sqlite_path(url)
        # FULL on a file: committed without an fsync, then made durable by one shared with
        # the other writers waiting, out of the write lock (group_commit).
        self._durable = SharedSync(sqlite_file) if sqlite_file and synchronous.upper() == "FULL" else None
        engine_synchronous = "NORMAL" if self._durable else synchronous
        self.engine = make_engine(url, engine_synchronous, ping_every_checkout)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.request_deadline = request_deadline
        # The ingest's single statement commits by itself (see _INGEST_POSTGRES), within the deadline.
        self.request_engine = make_request_engine(url, request_deadline) if self.is_postgres else None
        self._listeners: list[Callable[[], None]] = []
        # Touched after each commit that adds due deliveries, to wake workers of other processes.
        self.wake_file = sqlite_file + ".wake" if sqlite_file else None
        self._writers = WriterQueue(sqlite_file + ".lock") if sqlite_file else None
        # The ingest's and the worker's transactions on an SQLite file, outside SQLAlchemy's pool.
        self._drivers = sqlite_fast.Drivers(self.engine) if self._writers else None
        # The ingest's transactions: one for the requests of this process waiting at once.
        if self._writers:
            self.committer = SQLiteCommitter(self.engine, self._writers, self._durable, self._reopen_if_stale,
                                             self._woken, self._drivers,
                                             LogCheckpoints(sqlite_file, engine_synchronous))
        elif self.is_postgres:
            self.committer = PostgresCommitter(self.request_engine, _INGEST_POSTGRES, self._remaining_ms,
                                               self._reopen_if_stale, self._woken)
        else:  # an in-memory database: one connection, no turn to share
            self.committer = None

    @classmethod
    def for_service(cls, settings: Mapping[str, Any]) -> Store:
        """The service's store, as its settings name it, brought to the latest schema when
        AUTO_MIGRATE is on: what the web app runs on, and what gunicorn's master checks once
        before it forks. Its connections are closed again when the migration fails."""
        store = cls(settings["DATABASE_URL"], settings["SQLITE_SYNCHRONOUS"], settings["REQUEST_DEADLINE"])
        if settings["AUTO_MIGRATE"]:
            try:
                store.migrate()
            except BaseException:
                store.dispose()
                raise
        return store

    @classmethod
    def for_worker(cls, url: str, request_deadline: float = 10.0) -> Store:
        """A delivery worker's own store, for its claims and outcomes, which cost it a write
        transaction each: on SQLite committed without an fsync (``synchronous=NORMAL``; one
        lost in a power cut only runs a delivery again, as after a lost lease), on PostgreSQL
        on connections checked by a look at their socket (``engine.closed_by_server``), where
        the pool's pre-ping was one in five of the round trips of each delivery (issue #15).
        The service's store keeps both: /ready and the dashboard must not meet a connection
        lost a moment ago, even one whose server has not said so yet."""
        return cls(url, "NORMAL", request_deadline, ping_every_checkout=False)

    @contextlib.contextmanager
    def _write(self, deadline: float | None = None):
        """A write transaction; on an SQLite file, after this process's turn in the writers' queue.
        With ``deadline`` (a ``time.monotonic()`` instant), every wait ends by then
        (``DeadlinePassed``, or SQLite's busy timeout), and a transaction still open at the
        deadline is rolled back rather than committed late."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlinePassed("before the store was reached (the request waited in a queue)")
        self._reopen_if_stale()
        with self._turn(deadline):
            with self.engine.connect() as conn:
                if deadline is not None:
                    conn.execution_options(deadline=deadline)
                with conn.begin():
                    yield conn
                    if deadline is not None and time.monotonic() >= deadline:
                        raise DeadlinePassed("the deadline passed before the commit")

    @contextlib.contextmanager
    def _worker_write(self):
        """The worker's write transaction (a claim, an outcome): ``_write``'s, but on an SQLite
        file on one of the store's driver connections, where SQLAlchemy's connection, pool
        checkout and transaction events cost the worker more CPU than its statements (issue
        #15). Its statements go through ``_execute``."""
        if self._drivers is None:  # PostgreSQL, or SQLite in memory
            with self._write() as conn:
                yield conn
            return
        self._reopen_if_stale()
        with self._turn(None):
            driver = self._drivers.take()
            try:
                driver.begin(None)
                yield driver
                driver.commit()
            finally:
                self._drivers.give_back(driver)

    @contextlib.contextmanager
    def _turn(self, deadline: float | None):
        """Around a write transaction: on an SQLite file this process's turn in the writers'
        queue, then, once the turn is left, the shared fsync that makes the commit durable (the
        next writer commits meanwhile)."""
        with self._writers.turn(deadline) if self._writers else contextlib.nullcontext():
            yield
            commit = self._durable.committed() if self._durable else None
        if commit is not None:
            self._durable.wait_durable(commit)

    def _reopen_if_stale(self) -> None:
        """After a write met a file opened read-only (see make_engine): ``reopen_if_stale``."""
        reopen_if_stale(self.engine)

    # -- schema -----------------------------------------------------------------
    def _readonly(self):
        """A connection for reads. On PostgreSQL in autocommit: in a transaction psycopg sends
        BEGIN and waits for it before the first statement, and the pool a ROLLBACK when the
        connection comes back, two round trips more for each read, the worker's look for due
        deliveries among them. Under READ COMMITTED each statement sees its own snapshot
        either way."""
        self._reopen_if_stale()
        if self.is_postgres:
            return self.engine.connect().execution_options(readonly=True, isolation_level="AUTOCOMMIT")
        return self.engine.connect().execution_options(readonly=True)

    def schema_version(self) -> int:
        with self._readonly() as conn:
            if not self.engine.dialect.has_table(conn, "schema_migrations"):
                return 0
            return conn.execute(select(func.max(schema_migrations.c.version))).scalar() or 0

    def migrate(self) -> list[int]:
        """Bring the schema to the latest version; safe when several processes start at once.
        ``StoreError`` when an SQLite file's folder is missing or cannot be written: the
        writers' lock file beside it is opened first, and its ``OSError`` was a traceback from
        every command and from gunicorn, where a database out of reach is one line."""
        try:
            return self._migrated()
        except OSError as exc:
            problem = sqlite_folder_problem(self._writers.path) if self._writers else None
            raise (StoreError(problem) if problem else store_error(exc)) from exc

    def _migrated(self) -> list[int]:
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
            id=event.id, source=event.source, trigger_code=storable(event.trigger_code),
            sent_code=storable(event.sent_code), element=storable(event.element),
            object_id=storable(event.object_id), ref=storable(event.ref), entity=storable(event.entity),
            label=storable(event.label), scrub_rule=scrub_rule,
            received_at=event.received_at.timestamp(), body_sha256=event.body_sha256, test=event.test,
            payload=self._stored_payload(event.to_json()), remote_addr=storable(remote_addr),
        )
        search = dict(since=row["received_at"] - dedup_window, accepted=ACCEPTED)
        try:
            if self.is_postgres:  # one call of the ingest function: the committer sends it with the calls waiting
                call = dict(row, **search, dedup=dedup, duplicate=DUPLICATE, pending=PENDING, now=now,
                            plugins=plugins, channel=NOTIFY_CHANNEL)
                return self.committer.run((call, lambda duplicate_of: _ingested(event.id, duplicate_of, plugins)),
                                          deadline, len(row["payload"]))
            elif self.committer is not None:  # shares a transaction and an fsync with the requests waiting
                # (the committer wakes the workers, once for the transaction: _woken)
                return self.committer.run(lambda conn: self._ingest_sqlite(conn, row, search, dedup, plugins, now),
                                          deadline, len(row["payload"]))
            else:  # an in-memory database: one connection, no turn to share
                with self._write(deadline) as conn:
                    result = self._ingest_sqlite(conn, row, search, dedup, plugins, now)
        except FAILURES as exc:
            raise store_error(exc) from exc
        self._woken([result])
        return result

    def _stored_payload(self, text: str) -> str | bytes:
        """The payload column's value for an event's JSON: PostgreSQL compresses its own
        (schema version 7), SQLite keeps what ``payloads.packed`` makes."""
        return text if self.is_postgres else payloads.packed(text)

    def _woken(self, results: list[IngestResult]) -> None:
        """Wake the workers after a commit (durable) that added deliveries."""
        if any(result.deliveries for result in results):
            self._wake()

    def _ingest_sqlite(self, conn: Connection | sqlite_fast.Driver, row: dict[str, Any], search: dict[str, Any],
                       dedup: bool, plugins: list[str], now: float) -> IngestResult:
        """The statements of one ingest, on the driver's cursor (sqlite_fast)."""
        found = sqlite_fast.execute(conn, _FIND_DUPLICATE, dict(row, **search)) if dedup else None
        duplicate_of = (found.fetchone() or (None,))[0] if found else None
        stored = dict(row, status=DUPLICATE if duplicate_of else ACCEPTED, duplicate_of=duplicate_of,
                      raw_body=None, error=None, payload=None if duplicate_of else row["payload"])
        sqlite_fast.execute(conn, _INSERT_EVENT, stored, keys=tuple(stored))
        if plugins and not duplicate_of:
            new = [self._new_delivery(row["id"], p, now) for p in plugins]
            sqlite_fast.executemany(conn, _INSERT_DELIVERY, new, keys=tuple(new[0]))
        return _ingested(row["id"], duplicate_of, plugins)

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
            test=False, status=QUARANTINED, raw_body=raw, error=storable(error), remote_addr=storable(remote_addr))
        try:
            if self.is_postgres:  # one statement in autocommit, within the deadline
                self._remaining_ms(deadline)
                with self.request_engine.connect() as conn:
                    conn.execute(statement)
            else:
                with self._write(deadline) as conn:
                    conn.execute(statement)
        except FAILURES as exc:
            raise store_error(exc) from exc

    def probe_write(self) -> BaseException | None:
        """What a request's write meets now: None when one commits within the request deadline,
        else the error (for /ready and ``check``). A committed write, so that a read-only file, a stale
        read-only connection or a held lock shows: one row of schema_migrations, rewritten
        unchanged. It takes the writers' turn like a request. A full disk does not show here:
        SQLite writes nothing for an unchanged row, and a page would still fit in the room that
        the failed events' writes leave in its log; the events' 503s say it (and the
        ``DolibarrWebhooksEventsRefused`` alert)."""
        try:
            if self.is_postgres:
                with self.request_engine.connect() as conn:
                    conn.execute(_PROBE)
            else:
                with self._write(time.monotonic() + self.request_deadline) as conn:
                    conn.execute(_PROBE)
        except FAILURES as exc:
            return exc
        return None

    def quarantined(self, event_id: str | None = None) -> list[dict[str, Any]]:
        query = _QUARANTINED_LIST if not event_id else _QUARANTINED_LIST.where(events.c.id == storable(event_id))
        with self._readonly() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def accept_quarantined(self, event: Event, plugins: Iterable[str], scrub_rule: str | None = None) -> int:
        """A quarantined body now parses: store its event in place and create its deliveries."""
        now = time.time()
        plugins = list(plugins)
        with self._write() as conn:
            changed = conn.execute(update(events).where(events.c.id == event.id, events.c.status == QUARANTINED).values(
                trigger_code=storable(event.trigger_code), sent_code=storable(event.sent_code),
                element=storable(event.element), object_id=storable(event.object_id), ref=storable(event.ref),
                entity=storable(event.entity), test=event.test, label=storable(event.label), scrub_rule=scrub_rule,
                status=ACCEPTED, payload=self._stored_payload(event.to_json()), raw_body=None,
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
        wanted = {plugin: limit for plugin, limit in lanes.items() if limit > 0}
        if not wanted:
            return []
        now = time.time()
        # On PostgreSQL BEGIN and every plugin's read go in one round trip, the leases and
        # COMMIT in another, however many plugins: each read waiting for its answer, then each
        # lease, made two a plugin and two more.
        with self._worker_write() as conn, self._pipelined(conn) as sync:
            sent = [(plugin, self._due(conn, plugin, limit, now)) for plugin, limit in wanted.items()]
            sync()
            found = [(plugin, due.fetchall()) for plugin, due in sent]
            return [claim for plugin, rows in found for claim in self._lease(conn, plugin, rows, worker, lease)]

    def _due(self, conn, plugin: str, limit: int, now: float):
        """The claim's read (its rows locked on PostgreSQL), sent: ``_lease`` leases its rows."""
        return self._execute(conn, _CLAIM, {"plugin": plugin, "now": now, "limit": limit})

    def _lease(self, conn, plugin: str, rows: list, worker: str, lease: float) -> list[Claim]:
        if not rows:
            return []
        # The lease counts from here: getting the rows may have waited for a lock (SQLite's
        # write lock at BEGIN, a PostgreSQL table lock), and the whole lease is the holder's.
        leased_at = time.time()
        leases = [dict(lease_id=delivery_id, status=RUNNING, lease_token=secrets.token_hex(16),
                       lease_expires_at=leased_at + lease, locked_by=worker,
                       reclaimed=1 if status == RUNNING else 0, updated_at=leased_at)
                  for delivery_id, status, _attempted, _payload in rows]
        self._execute(conn, _LEASE, leases, _LEASE_SET)
        return [Claim(delivery_id, plugin, held["lease_token"], attempted, status == RUNNING,
                      Event.from_dict(payloads.parsed(payload)), leased_at)
                for (delivery_id, status, attempted, payload), held in zip(rows, leases)]

    def has_due(self, plugins: Iterable[str]) -> bool:
        """A cheap read: is anything due for these plugins? (Avoids taking the write lock when idle.)"""
        now = time.time()
        plugins = list(plugins)
        if not plugins:
            return False
        with self._readonly() as conn:
            return conn.execute(_HAS_DUE, {"plugins": plugins, "now": now}).first() is not None

    def next_retry_at(self, plugins: Iterable[str]) -> float | None:
        """When the earliest retry of these plugins comes due. New deliveries and replays wake a
        PostgreSQL worker with a NOTIFY; a retry coming due does not, so the worker must not
        sleep past it."""
        plugins = list(plugins)
        if not plugins:
            return None
        with self._readonly() as conn:
            return conn.execute(_NEXT_RETRY, {"plugins": plugins}).scalar()

    def finish(self, claim: Claim, status: str, error: str | None, next_attempt_at: float | None,
               worker: str, outcome: str | None = None, count_attempt: bool = True) -> bool:
        """Record an attempt and move the delivery on; False when the lease was lost meanwhile."""
        with self._worker_write() as conn:
            return self._finish(conn, claim, status, error, next_attempt_at, worker, outcome, count_attempt)

    def finish_and_claim(self, claim: Claim, status: str, error: str | None, next_attempt_at: float | None,
                         worker: str, lease: float) -> tuple[bool, Claim | None]:
        """``finish``, then, in the same transaction, the claim of the next due delivery of the
        same plugin (None when none is due): a lane kept busy by a backlog pays one write
        transaction a delivery instead of two (its outcome, then the claim for the lane it freed)."""
        # On PostgreSQL BEGIN, the outcome and the claim go in one round trip, then the attempt,
        # the lease and COMMIT in another: two, where each statement waiting for its answer
        # made six. Each group needs nothing from the answers of its own statements.
        with self._worker_write() as conn, self._pipelined(conn) as sync:
            sent = self._outcome(conn, claim, status, error, next_attempt_at)
            due = self._due(conn, claim.plugin, 1, time.time())
            sync()
            rows = due.fetchall()
            held = self._attempt(conn, claim, sent, worker)
            following = self._lease(conn, claim.plugin, rows, worker, lease)
        return held, (following[0] if following else None)

    def _pipelined(self, conn):
        """Around the statements of a worker's transaction, from its first: PostgreSQL's
        pipeline mode (``postgres_fast.pipeline``), BEGIN and COMMIT included; nothing on
        SQLite, where a statement is no round trip."""
        return postgres_fast.pipeline(conn) if self.is_postgres else contextlib.nullcontext(lambda: None)

    def _finish(self, conn, claim: Claim, status: str, error: str | None, next_attempt_at: float | None,
                worker: str, outcome: str | None = None, count_attempt: bool = True) -> bool:
        return self._attempt(conn, claim, self._outcome(conn, claim, status, error, next_attempt_at, count_attempt),
                             worker, outcome)

    def _outcome(self, conn, claim: Claim, status: str, error: str | None, next_attempt_at: float | None,
                 count_attempt: bool = True) -> tuple:
        """The delivery's new state, sent, if its lease is still the claim's: ``_attempt``
        records the attempt once its answer says whether it was."""
        now = time.time()  # after any wait for SQLite's write lock
        # A failure's text may hold a NUL (a remote's binary answer, quoted) or a lone surrogate
        # (a forged body's field, quoted): either failed the write, and the lane's thread died
        # with the delivery left running (``describe_failure`` escapes the second already).
        error = storable(encodable(error) if error else error)
        values: dict[str, Any] = dict(status=status, last_error=error, lease_token=None, lease_expires_at=None,
                                      locked_by=None, updated_at=now)
        if count_attempt:
            values["attempts"] = claim.attempts + 1
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if status == DELIVERED:
            values["delivered_at"] = now
        sent = self._execute(conn, _FINISH_HELD, dict(values, held_id=claim.delivery_id, held_token=claim.token),
                             tuple(values))
        return sent, status, error, now

    def _attempt(self, conn, claim: Claim, outcome: tuple, worker: str, named: str | None = None) -> bool:
        """The attempt of an ``_outcome``, recorded: "late" when the lease was lost meanwhile
        (``named``: the attempt's outcome when not the delivery's new state). Whether it held."""
        sent, status, error, now = outcome
        held = sent.rowcount == 1
        attempt = dict(delivery_id=claim.delivery_id, number=claim.attempts + 1, worker=worker,
                       started_at=claim.started_at, finished_at=now,
                       outcome=(named or status) if held else "late", error=error,
                       duration_ms=round((now - claim.started_at) * 1000, 3))
        self._execute(conn, _INSERT_ATTEMPT, attempt, tuple(attempt))
        return held

    def _execute(self, conn: Connection | sqlite_fast.Driver, statement, params: dict[str, Any] | list[dict[str, Any]],
                 keys: tuple[str, ...] | None = None):
        """One of the worker's statements (built once) in a ``_worker_write`` transaction, once,
        or for each of a list of parameters (one round trip on PostgreSQL: psycopg pipelines
        them); its result read with ``fetchall``, ``fetchone`` or ``rowcount`` only. On the
        driver's cursor (sqlite_fast, postgres_fast): SQLAlchemy's execution cost the worker
        more CPU than the statements (issue #15). ``keys``: the columns an INSERT or an UPDATE
        sets."""
        if self.is_postgres:
            return postgres_fast.execute(conn, statement, params, keys)
        if isinstance(params, list):
            return sqlite_fast.executemany(conn, statement, params, keys)
        return sqlite_fast.execute(conn, statement, params, keys)

    def dispose(self) -> None:
        if self.committer is not None:
            self.committer.close()
        self.engine.dispose()
        if self._writers is not None:
            self._writers.close()
        if self._durable:
            self._durable.close()
        if self.request_engine is not None:
            self.request_engine.dispose()
