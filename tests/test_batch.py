"""Group commit of the SQLite ingest (``store.batch.Committer``): the requests of a process
waiting at once share one transaction and one fsync, and each keeps what it was promised
alone: an exact duplicate search, its deadline, its own errors, no answer before the fsync.

Real threads on real SQLite files. The requests are made to wait together by holding the
writers' lock of the file (``<database>.lock``) as a writer of another process would, until
all of them are queued: then the batch they form does not depend on timing.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import threading
import time

import pytest
from sqlalchemy import text

from dolibarr_webhooks.store import DATA, TIMEOUT, UNAVAILABLE, DeadlinePassed, IngestResult, Store, StoreError
from dolibarr_webhooks.store.group_commit import read_counters
from dolibarr_webhooks.testing import make_event, wait_for

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


class HeldTurn:
    """The writers' lock of a store's file, held as another process's writer holds it."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class Requests:
    """Calls run in threads, one after the other joining the store's queue, with their outcome."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.threads: list[threading.Thread] = []
        self.outcomes: dict[int, object] = {}

    def start(self, call) -> None:
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
        wait_for(lambda: self.store.committer.waiting() == len(self.threads) or number in self.outcomes)

    def join(self) -> list[object]:
        for thread in self.threads:
            thread.join(30)
        return [self.outcomes[number] for number in range(len(self.threads))]


def table_rows(store: Store, sql: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql))]


def test_requests_waiting_together_are_one_transaction_one_fsync_one_wake_up(store, sqlite_file):
    woken = []
    store.add_listener(lambda: woken.append(1))
    before = read_counters(sqlite_file)
    events = [make_event("BILL_VALIDATE", id=1000 + n) for n in range(12)]
    held, requests = HeldTurn(sqlite_file), Requests(store)
    try:
        for event in events:
            requests.start(lambda event=event: store.ingest(event, PLUGINS))
    finally:
        held.release()
    results = requests.join()
    assert [result.status for result in results] == ["accepted"] * 12
    assert (store.committer.batches, store.committer.committed) == (1, 12)
    counters = read_counters(sqlite_file)
    assert counters["commits"] == before["commits"] + 1 and counters["fsyncs"] == before["fsyncs"] + 1
    assert woken == [1]  # the workers are woken once for the transaction, not once per request
    # Every acknowledged event is stored, with one delivery per plugin.
    stored = table_rows(store, "SELECT e.id, count(d.id) FROM events e JOIN deliveries d ON d.event_id = e.id "
                               "GROUP BY e.id")
    assert sorted(stored) == sorted((event.id, len(PLUGINS)) for event in events)


def test_a_request_alone_is_committed_at_once(store):
    # No company to wait for: each is its own transaction, and nothing was left queued.
    for n in range(3):
        assert store.ingest(make_event("BILL_VALIDATE", id=n), PLUGINS).status == "accepted"
    assert (store.committer.batches, store.committer.committed, store.committer.waiting()) == (3, 3, 0)


def test_a_duplicate_of_an_event_earlier_in_the_batch_is_found(store, sqlite_file):
    # The same body five times: one event, four duplicates that name it, in one transaction.
    events = [make_event("BILL_VALIDATE") for _ in range(5)]
    held, requests = HeldTurn(sqlite_file), Requests(store)
    try:
        for event in events:
            requests.start(lambda event=event: store.ingest(event, PLUGINS, dedup_window=60))
    finally:
        held.release()
    results = requests.join()
    assert store.committer.batches == 1
    assert [result.status for result in results] == ["accepted"] + ["duplicate"] * 4
    assert {result.duplicate_of for result in results[1:]} == {events[0].id}
    assert table_rows(store, "SELECT count(*) FROM deliveries") == [(len(PLUGINS),)]
    assert table_rows(store, "SELECT status, count(*) FROM events GROUP BY status ORDER BY status") == [
        ("accepted", 1), ("duplicate", 4)]


def test_a_data_error_fails_its_request_only(store, sqlite_file):
    taken = make_event("BILL_VALIDATE", id=1)
    store.ingest(taken, PLUGINS)
    again = dataclasses.replace(make_event("BILL_VALIDATE", id=2), id=taken.id)  # the INSERT breaks the key
    events = [make_event("BILL_VALIDATE", id=3), again, make_event("BILL_VALIDATE", id=4)]
    held, requests = HeldTurn(sqlite_file), Requests(store)
    try:
        for event in events:
            requests.start(lambda event=event: store.ingest(event, PLUGINS))
    finally:
        held.release()
    first, failed, last = requests.join()
    assert first.status == last.status == "accepted"
    assert isinstance(failed, StoreError) and failed.kind == DATA
    assert store.committer.batches == 2  # one commit for the others: the batch without the bad request
    stored = {row[0] for row in table_rows(store, "SELECT id FROM events")}
    assert stored == {taken.id, first.event_id, last.event_id}
    assert table_rows(store, "SELECT count(*) FROM deliveries") == [(3 * len(PLUGINS),)]


def test_a_failed_fsync_fails_exactly_the_requests_of_its_commit(store, sqlite_file, monkeypatch):
    real_fdatasync, calls = os.fdatasync, []

    def fails_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fails_once)
    held, requests = HeldTurn(sqlite_file), Requests(store)
    try:
        for n in range(4):
            requests.start(lambda n=n: store.ingest(make_event("BILL_VALIDATE", id=n), PLUGINS))
    finally:
        held.release()
    failures = requests.join()
    assert store.committer.batches == 1
    assert {(type(error), error.kind) for error in failures} == {(StoreError, UNAVAILABLE)}
    assert all("fsync" in str(error) for error in failures)
    # The next batch is synced by a sync of its own, and acknowledged.
    held, requests = HeldTurn(sqlite_file), Requests(store)
    try:
        for n in range(4, 7):
            requests.start(lambda n=n: store.ingest(make_event("BILL_VALIDATE", id=n), PLUGINS))
    finally:
        held.release()
    assert [result.status for result in requests.join()] == ["accepted"] * 3
    assert store.committer.batches == 2 and len(calls) == 2


def test_a_request_still_queued_at_its_deadline_is_answered_and_not_stored(store, sqlite_file):
    held, requests = HeldTurn(sqlite_file), Requests(store)
    try:
        requests.start(lambda: store.ingest(make_event("BILL_VALIDATE", id=1), PLUGINS))
        requests.start(lambda: store.ingest(make_event("BILL_VALIDATE", id=2), PLUGINS,
                                            deadline=time.monotonic() + 0.2))
        requests.start(lambda: store.ingest(make_event("BILL_VALIDATE", id=3), PLUGINS))
        # The second gives up at its deadline while the others still wait for the turn.
        wait_for(lambda: 1 in requests.outcomes)
    finally:
        held.release()
    first, expired, last = requests.join()
    assert isinstance(expired, StoreError) and expired.kind == TIMEOUT
    assert first.status == last.status == "accepted"
    assert {row[0] for row in table_rows(store, "SELECT id FROM events")} == {first.event_id, last.event_id}


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
        def work(conn):
            conn.exec_driver_sql(f"INSERT INTO marks VALUES ('{name}')")
            if slow:
                wait_for(lambda: time.monotonic() >= deadline, interval=0.01)
            return IngestResult("accepted", name)  # what the store's after_durable reads
        return work

    slow_first = expires == "before its statements ran"
    held, requests = HeldTurn(sqlite_file), Requests(store)
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
