"""Checkpoints of an SQLite store's log by a thread of each process (``store.checkpoint``): the
log's index is read as SQLite itself counts it, the thread copies the log while the ingest goes
on, SQLite still starts the log again from its beginning (it stays as small as before), and
the thread ends with the store. Real SQLite files, real threads."""

from __future__ import annotations

import os
import sqlite3

import pytest

from dolibarr_webhooks.store import Store, checkpoint
from dolibarr_webhooks.testing import make_event, wait_for

# SQLite starts the log again once a checkpoint has copied it all: at most its own
# checkpoint's 1,000 pages of 4 KB, and one transaction more.
LOG_BOUND = 6 * 1024 * 1024


# conftest's migrated store, on an SQLite file only.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def store(migrated_store):
    return migrated_store


def checkpoint_of(path: str) -> tuple[int, int, int]:
    """SQLite's own count of the log: (busy, pages in the log, pages copied), after copying it."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        connection.close()


def test_the_pages_not_yet_copied_are_read_as_sqlite_counts_them(store):
    checkpoints = store.committer.checkpoints
    checkpoints.pages = 10**9  # no thread: the log stays as the commits left it
    path = store.engine.url.database
    checkpoint_of(path)  # all copied: the next commit starts the log again
    for _ in range(5):
        store.ingest(make_event("BILL_VALIDATE"), ["log"])
    uncopied = checkpoints.uncopied()
    busy, pages, copied = checkpoint_of(path)
    assert busy == 0 and pages == copied
    assert 5 < uncopied == pages
    assert checkpoints.uncopied() == 0
    assert checkpoints.runs == 0


def test_the_thread_copies_the_log_while_the_ingest_goes_on_and_the_log_stays_small(store):
    checkpoints = store.committer.checkpoints
    path = store.engine.url.database
    for _ in range(400):  # about 24 pages each: ten times SQLite's checkpoint
        store.ingest(make_event("BILL_VALIDATE"), ["log"])
    assert checkpoints.runs >= 5
    wait_for(lambda: checkpoints.uncopied() < checkpoints.pages, timeout=10, message="the thread to catch up")
    assert os.path.getsize(path + "-wal") < LOG_BOUND


def test_the_thread_ends_with_the_store_and_after_idling(store, monkeypatch):
    checkpoints = store.committer.checkpoints
    for _ in range(100):
        store.ingest(make_event("BILL_VALIDATE"), ["log"])
    thread = checkpoints._thread
    assert thread is not None and thread.is_alive()
    store.dispose()
    thread.join(5)
    assert not thread.is_alive()

    monkeypatch.setattr(checkpoint, "IDLE_SECONDS", 0.2)
    again = Store(store.url)
    try:
        for _ in range(100):
            again.ingest(make_event("BILL_VALIDATE"), ["log"])
        thread = again.committer.checkpoints._thread
        assert thread is not None
        thread.join(5)  # nothing to copy any more: it lets go of its connection and ends
        assert not thread.is_alive()
        assert again.committer.checkpoints.runs >= 1
    finally:
        again.dispose()
