"""Group commit of the ingest (``store.batch``): the requests of a process waiting at once
share one transaction (and on SQLite one fsync), and each keeps what it was promised alone:
an exact duplicate search, its deadline, its own errors, no answer before the fsync.

Real threads on real SQLite files and a real PostgreSQL database. The requests are made to
wait together, so that the batch they form does not depend on timing: on SQLite the test
holds the writers' lock of the file (``<database>.lock``) as a writer of another process
would, and the first request waits for it with the others queued behind; on PostgreSQL the
test holds a lock on the events table, the first request's call waits for it, alone, and the
requests queued meanwhile form the next batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from dolibarr_webhooks.store import engine, libpq_url, sqlite_path
from dolibarr_webhooks.store import DATA, TIMEOUT, UNAVAILABLE, DeadlinePassed, IngestResult, Store, StoreError
from dolibarr_webhooks.store.group_commit import read_counters
from dolibarr_webhooks.testing import make_event, wait_for
from dolibarr_webhooks_testplugin import HeldFileLock, writes_blocked

PLUGINS = ["log", "mail"]


@pytest.fixture
def sqlite_file(tmp_path):
    return str(tmp_path / "webhooks.sqlite3")


@pytest.fixture
def store(sqlite_file):
    store = Store(f"sqlite:///{sqlite_file}")
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture
def any_store(migrated_store):
    return migrated_store


def held_turn(path: str) -> HeldFileLock:
    """The writers' lock of a store's file, held as another process's writer holds it."""
    return HeldFileLock(path + ".lock")


class HeldTable:
    """PostgreSQL's events table, locked by another session."""

    def __init__(self, url: str) -> None:
        import psycopg

        self.conn = psycopg.connect(libpq_url(url))
        self.conn.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")

    def waited_for(self) -> bool:
        return self.conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def held_writes(store: Store):
    return HeldTable(store.url) if store.is_postgres else held_turn(sqlite_path(store.url))


def batched(store: Store, calls: list) -> list[object]:
    """The outcomes of ``calls``, queued in this order while the store's writes are held.
    On PostgreSQL a first call waits alone for the lock: the calls form the next batch."""
    held, requests = held_writes(store), Requests(store)
    try:
        if store.is_postgres:
            requests.start(lambda: store.ingest(make_event("BILL_VALIDATE", id=999_999), PLUGINS), held.waited_for)
            requests.taken = 1
        for call in calls:
            requests.start(call)
    finally:
        held.release()
    outcomes = requests.join()
    return outcomes[1:] if store.is_postgres else outcomes


class Requests:
    """Calls run in threads, one after the other joining the store's queue, with their outcome."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[int, object] = {}
        self.taken = 0  # requests already in a transaction, out of the queue

    def start(self, call, waits=None) -> None:
        """Start ``call``; return once it waits in the queue (or ``waits()`` is true)."""
        number = len(self.threads)

        def run() -> None:
            try:
                self.outcomes[number] = call()
            except Exception as exc:
                self.outcomes[number] = exc

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()
        # Queued before the next one starts: the order of the batch is the order of the calls.
        wait_for(waits or (lambda: self.store.committer.waiting() == len(self.threads) - self.taken
                           or number in self.outcomes))

    def join(self) -> list[object]:
        for thread in self.threads:
            thread.join(30)
        return [self.outcomes[number] for number in range(len(self.threads))]


def ingested_behind_the_turn(store: Store, sqlite_file: str, object_ids) -> list[object]:
    """The outcomes of ingests of these objects, queued behind the file's writers' lock held by
    the test, then let go together: one batch."""
    held, requests = held_turn(sqlite_file), Requests(store)
    try:
        for n in object_ids:
            requests.start(lambda n=n: store.ingest(make_event("BILL_VALIDATE", id=n), PLUGINS))
    finally:
        held.release()
    return requests.join()


def table_rows(store: Store, sql: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def stored_events(store: Store) -> dict[str, tuple[str, int]]:
    """Each event's status and number of deliveries, read with plain SQL."""
    rows = table_rows(store, "SELECT e.id, e.status, count(d.id) FROM events e "
                             "LEFT JOIN deliveries d ON d.event_id = e.id GROUP BY e.id, e.status")
    return {row[0]: (row[1], row[2]) for row in rows}


def transactions_of(store: Store, events) -> int:
    ids = ", ".join(f"'{event.id}'" for event in events)
    return table_rows(store, f"SELECT count(DISTINCT xmin::text) FROM events WHERE id IN ({ids})")[0][0]


def test_requests_waiting_together_are_one_transaction_one_wake_up(any_store):
    woken = []
    any_store.add_listener(lambda: woken.append(1))
    path = None if any_store.is_postgres else sqlite_path(any_store.url)
    before = read_counters(path) if path else None
    events = [make_event("BILL_VALIDATE", id=1000 + n) for n in range(12)]
    results = batched(any_store, [lambda event=event: any_store.ingest(event, PLUGINS) for event in events])
    assert [result.status for result in results] == ["accepted"] * 12
    alone = 1 if any_store.is_postgres else 0  # PostgreSQL's first call, that met the lock
    assert (any_store.committer.batches, any_store.committer.committed) == (1 + alone, 12 + alone)
    assert len(woken) == 1 + alone  # the workers are woken once for the transaction, not once per request
    if path:  # and SQLite synced it once
        counters = read_counters(path)
        assert counters["commits"] == before["commits"] + 1 and counters["fsyncs"] == before["fsyncs"] + 1
    else:  # the rows of one PostgreSQL transaction have the same xmin
        assert transactions_of(any_store, events) == 1
    # Every acknowledged event is stored, with one delivery per plugin.
    stored = stored_events(any_store)
    assert all(stored[event.id] == ("accepted", len(PLUGINS)) for event in events)


def test_a_request_alone_is_committed_at_once(any_store):
    # No company to wait for: each is its own transaction, and nothing was left queued.
    for n in range(3):
        assert any_store.ingest(make_event("BILL_VALIDATE", id=n), PLUGINS).status == "accepted"
    assert (any_store.committer.batches, any_store.committer.committed, any_store.committer.waiting()) == (3, 3, 0)


def test_a_duplicate_of_an_event_earlier_in_the_batch_is_found(any_store):
    # The same body five times: one event, four duplicates that name it, in one transaction.
    events = [make_event("BILL_VALIDATE") for _ in range(5)]
    batches = any_store.committer.batches
    results = batched(any_store, [lambda event=event: any_store.ingest(event, PLUGINS, dedup_window=60)
                                  for event in events])
    assert any_store.committer.batches == batches + (2 if any_store.is_postgres else 1)
    assert [result.status for result in results] == ["accepted"] + ["duplicate"] * 4
    assert {result.duplicate_of for result in results[1:]} == {events[0].id}
    stored = stored_events(any_store)
    assert [stored[event.id] for event in events] == [("accepted", len(PLUGINS))] + [("duplicate", 0)] * 4
    if any_store.is_postgres:
        assert transactions_of(any_store, events) == 1


def test_a_batch_finds_duplicates_in_the_store_and_among_its_requests(any_store):
    """Each request of a batch finds what its search alone finds (the same source, body, code and
    object, accepted within the window; never for a test event), in the store and among the
    requests before it in the transaction."""
    stored_before = make_event("BILL_VALIDATE", id=1)
    too_old = dataclasses.replace(make_event("BILL_VALIDATE", id=2),
                                  received_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    for event in (stored_before, too_old):
        any_store.ingest(event, PLUGINS, dedup_window=60)
    events = [
        make_event("BILL_VALIDATE", id=1),  # a duplicate of stored_before
        make_event("BILL_VALIDATE", id=3),
        make_event("BILL_VALIDATE", id=3),  # a duplicate of the one before it in the batch
        make_event("BILL_VALIDATE", id=1, source="other"),  # another source: not a duplicate
        make_event("BILL_VALIDATE", id=2),  # too_old is out of the window
        make_event("BILL_VALIDATE", id=3, test=True),  # a test event is never a duplicate
        make_event("BILL_PAYED", id=3),  # another code
    ]
    batches = any_store.committer.batches
    results = batched(any_store, [lambda event=event: any_store.ingest(event, PLUGINS, dedup_window=60)
                                  for event in events])
    assert any_store.committer.batches == batches + (2 if any_store.is_postgres else 1)
    assert [(result.status, result.duplicate_of) for result in results] == [
        ("duplicate", stored_before.id), ("accepted", None), ("duplicate", events[1].id),
        ("accepted", None), ("accepted", None), ("accepted", None), ("accepted", None)]
    stored = stored_events(any_store)
    assert [stored[event.id] for event in events] == [
        ("duplicate", 0), ("accepted", 2), ("duplicate", 0), ("accepted", 2), ("accepted", 2), ("accepted", 2),
        ("accepted", 2)]


def test_a_data_error_fails_its_request_only(any_store):
    taken = make_event("BILL_VALIDATE", id=1)
    any_store.ingest(taken, PLUGINS)
    again = dataclasses.replace(make_event("BILL_VALIDATE", id=2), id=taken.id)  # the INSERT breaks the key
    events = [make_event("BILL_VALIDATE", id=3), again, make_event("BILL_VALIDATE", id=4)]
    first, failed, last = batched(any_store, [lambda event=event: any_store.ingest(event, PLUGINS)
                                              for event in events])
    assert first.status == last.status == "accepted"
    assert isinstance(failed, StoreError) and failed.kind == DATA
    stored = stored_events(any_store)
    assert {first.event_id, last.event_id, taken.id} <= set(stored)
    assert stored[taken.id] == stored[first.event_id] == stored[last.event_id] == ("accepted", len(PLUGINS))


def test_a_failed_fsync_fails_exactly_the_requests_of_its_commit(store, sqlite_file, monkeypatch):
    real_fdatasync, calls = os.fdatasync, []

    def fails_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fails_once)
    failures = ingested_behind_the_turn(store, sqlite_file, range(4))
    assert store.committer.batches == 1
    assert {(type(error), error.kind) for error in failures} == {(StoreError, UNAVAILABLE)}
    assert all("fsync" in str(error) for error in failures)
    # The next batch is synced by a sync of its own, and acknowledged.
    assert [result.status for result in ingested_behind_the_turn(store, sqlite_file, range(4, 7))] == ["accepted"] * 3
    assert store.committer.batches == 2 and len(calls) == 2


def test_a_transaction_that_cannot_begin_fails_every_request_of_its_batch(store, sqlite_file, monkeypatch):
    """Not one request's fault (another program keeps the write lock past SQLite's busy timeout,
    none of the requests having a deadline): every request taken is answered with it."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT", 0.5)
    with writes_blocked(f"sqlite:///{sqlite_file}"):
        failures = ingested_behind_the_turn(store, sqlite_file, range(3))
    assert [(type(error), error.kind) for error in failures] == [(StoreError, TIMEOUT)] * 3
    assert stored_events(store) == {} and store.committer.batches == 0


def test_a_request_still_queued_at_its_deadline_is_answered_and_not_stored(any_store):
    def ingest(object_id: int, deadline: float | None = None):
        return lambda: any_store.ingest(make_event("BILL_VALIDATE", id=object_id), PLUGINS, deadline=deadline)

    held, requests = held_writes(any_store), Requests(any_store)
    try:
        requests.start(ingest(1), held.waited_for if any_store.is_postgres else None)
        requests.taken = 1 if any_store.is_postgres else 0
        requests.start(ingest(2, time.monotonic() + 0.2))
        requests.start(ingest(3))
        # The second gives up at its deadline while the others still wait.
        wait_for(lambda: 1 in requests.outcomes)
    finally:
        held.release()
    first, expired, last = requests.join()
    assert isinstance(expired, StoreError) and expired.kind == TIMEOUT
    assert first.status == last.status == "accepted"
    assert set(stored_events(any_store)) == {first.event_id, last.event_id}


@pytest.mark.parametrize("first_to_expire", ["the leader", "a request behind it"])
def test_each_request_is_answered_by_its_own_deadline_not_its_batch_mates(any_store, first_to_expire):
    """A lock held past one request's deadline: that request is answered then, while the others
    of its batch, whose deadlines are later, still wait for the lock. Before, a batch's leader
    (a request's own thread) answered only once it had waited for the others too, and on SQLite
    the wait for another program's write lock lasted until the batch's last deadline: a
    proxy's 503 came seconds after the deadline (CI, test_production_store_faults)."""
    soon, late = time.monotonic() + 2.0, time.monotonic() + 60
    deadlines = [soon, late, late] if first_to_expire == "the leader" else [late, soon, late]
    events = [make_event("BILL_VALIDATE", id=number) for number in (1, 2, 3)]
    requests = Requests(any_store)
    try:
        with contextlib.ExitStack() as held:
            if any_store.is_postgres:
                table = HeldTable(any_store.url)
                held.callback(table.release)
                # A first request waits alone for the lock until its deadline; the three queued
                # meanwhile form the next batch.
                requests.start(lambda: any_store.ingest(make_event("BILL_VALIDATE", id=0), PLUGINS,
                                                        deadline=time.monotonic() + 1.0), table.waited_for)
                requests.taken = 1
            else:
                held.enter_context(writes_blocked(any_store.url))  # another program's write lock
                turn = held_turn(sqlite_path(any_store.url))  # the three queue behind this turn
            for event, deadline in zip(events, deadlines):
                requests.start(lambda event=event, deadline=deadline:
                               any_store.ingest(event, PLUGINS, deadline=deadline))
            if not any_store.is_postgres:
                turn.release()
            expiring = requests.taken + deadlines.index(soon)
            wait_for(lambda: expiring in requests.outcomes, timeout=20,
                     message=lambda: f"no answer by its deadline: {requests.outcomes}")
            assert set(requests.outcomes) <= {0, expiring}, "the others wait for the lock until theirs"
    finally:  # the locks released, every thread ends before the store is disposed of
        answers = requests.join()
    outcomes = answers[requests.taken:]
    expired = outcomes.pop(deadlines.index(soon))
    assert isinstance(expired, StoreError) and expired.kind == TIMEOUT
    assert [outcome.status for outcome in outcomes] == ["accepted", "accepted"]
    assert set(stored_events(any_store)) == {outcome.event_id for outcome in outcomes}


@pytest.mark.parametrize("expires", ["before its statements ran", "before the commit"])
def test_a_request_whose_deadline_passes_in_the_batch_is_left_out_and_the_others_committed(
        store, sqlite_file, expires):
    """The committer with work of the test's own, on a table of the test: the request before
    (or after) the one that expires runs, inside the transaction, until that deadline has passed."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE marks (name TEXT PRIMARY KEY)")
    # Far enough for the three to be queued and taken together, the turn being released at once.
    deadline = time.monotonic() + 2.0

    def insert(name: str, slow: bool = False):
        def work(driver):  # the committer's sqlite_fast.Driver
            driver.connection.execute(f"INSERT INTO marks VALUES ('{name}')")
            if slow:
                wait_for(lambda: time.monotonic() >= deadline, interval=0.01)
            return IngestResult("accepted", name)  # what the store's after_durable reads
        return work

    slow_first = expires == "before its statements ran"
    held, requests = held_turn(sqlite_file), Requests(store)
    try:
        requests.start(lambda: store.committer.run(insert("first", slow=slow_first)))
        requests.start(lambda: store.committer.run(insert("expiring"), deadline))
        requests.start(lambda: store.committer.run(insert("last", slow=not slow_first)))
    finally:
        held.release()
    first, expired, last = requests.join()
    assert (first.event_id, last.event_id) == ("first", "last")
    assert isinstance(expired, DeadlinePassed) and expires in str(expired)
    assert table_rows(store, "SELECT name FROM marks ORDER BY name") == [("first",), ("last",)]
    assert store.committer.batches == 1
