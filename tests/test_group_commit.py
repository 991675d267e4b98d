"""Group commit on SQLite (``group_commit.SharedSync``): writers waiting at the same time
share one fsync, in threads of one process and across processes, and none is answered
before the fsync that covers its commit has returned. Real threads, real SQLite files,
real gunicorn killed with ``kill -9``."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

import pytest
import requests

from dolibarr_webhooks.store.group_commit import SharedSync, SyncFailed, read_counters
from dolibarr_webhooks.store import UNAVAILABLE, Store, StoreError
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET, make_event, running_service, wait_for
from dolibarr_webhooks_testplugin import HeldFileLock


@pytest.fixture
def sqlite_file(tmp_path):
    return str(tmp_path / "webhooks.sqlite3")


def stored_ids(path: str) -> set[str]:
    store = Store(f"sqlite:///{path}")
    try:
        return {row["id"] for row in store.object_events("facture", "311", limit=100_000)}
    finally:
        store.dispose()


def held_sync(path: str) -> HeldFileLock:
    """Holds the fsync turn of a store's file, as a writer of another process syncing would."""
    return HeldFileLock(path + ".sync")


def ingest_in_threads(stores: list[Store], per_store: int) -> tuple[list[threading.Thread], list[str]]:
    acknowledged: list[str] = []

    def ingest(store: Store) -> None:
        event = make_event("BILL_VALIDATE")
        store.ingest(event, ["log"])
        acknowledged.append(event.id)

    threads = [threading.Thread(target=ingest, args=(s,)) for s in stores for _ in range(per_store)]
    for thread in threads:
        thread.start()
    return threads, acknowledged


def test_writers_waiting_together_share_one_fsync_and_none_is_answered_before_it(sqlite_file):
    store = Store(f"sqlite:///{sqlite_file}")
    store.migrate()
    before = read_counters(sqlite_file)
    held = held_sync(sqlite_file)
    try:
        threads, acknowledged = ingest_in_threads([store], 8)
        # Every writer commits (the write lock is free), then waits for an fsync...
        wait_for(lambda: store.committer.committed == 8, timeout=30)
        time.sleep(0.2)
        assert acknowledged == []  # ...and none returns while the fsync cannot run.
    finally:
        held.release()
    for thread in threads:
        thread.join(30)
    counters = read_counters(sqlite_file)
    assert len(acknowledged) == 8
    assert counters["fsyncs"] == before["fsyncs"] + 1  # one fsync for the eight commits
    assert counters["synced"] == counters["commits"]
    assert set(acknowledged) <= stored_ids(sqlite_file)
    store.dispose()


def test_writers_of_two_processes_share_fsyncs(sqlite_file):
    """Two stores on one file stand for two processes: each has its own descriptors, so its
    own turn in the file locks, and no thread lock in common with the other."""
    first, second = Store(f"sqlite:///{sqlite_file}"), Store(f"sqlite:///{sqlite_file}")
    first.migrate()
    held = held_sync(sqlite_file)
    try:
        threads, acknowledged = ingest_in_threads([first, second], 4)
        wait_for(lambda: first.committer.committed + second.committer.committed == 8, timeout=30)
        assert acknowledged == []
    finally:
        held.release()
    for thread in threads:
        thread.join(30)
    assert len(acknowledged) == 8
    # The first to get the turn syncs for all eight; the other process may sync once more
    # if it asked before the first sync ended, never once per commit.
    assert 1 <= first._durable.syncs + second._durable.syncs <= 2
    assert set(acknowledged) <= stored_ids(sqlite_file)
    first.dispose()
    second.dispose()


def test_a_failed_fsync_fails_each_commit_it_covered_and_not_later_ones(sqlite_file, monkeypatch):
    store = Store(f"sqlite:///{sqlite_file}")
    store.migrate()

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", failing)
        with pytest.raises(StoreError) as raised:
            store.ingest(make_event("BILL_VALIDATE"), ["log"])
    assert raised.value.kind == UNAVAILABLE and "fsync" in str(raised.value)
    # The commit that failed its fsync is never reported durable, even by a later sync...
    failed = read_counters(sqlite_file)["failed"]
    with pytest.raises(SyncFailed):
        store._durable.wait_durable(failed)
    # ...while the commits after it are.
    assert store.ingest(make_event("BILL_VALIDATE"), ["log"]).status == "accepted"
    store.dispose()


def test_a_sync_closed_while_its_writers_commit_and_wait_fails_none_of_them(sqlite_file):
    """A store is disposed of at shutdown, its worker's lanes perhaps still recording an
    outcome (after ``SHUTDOWN_GRACE``): closing the shared counters under a writer that is
    numbering its commit or waiting for its fsync must not fail it (it maps them again), and
    every commit is still covered by an fsync that began after it."""
    open(sqlite_file, "wb").close()  # no log: the fsync is the database file's
    sync = SharedSync(sqlite_file)
    errors: list[BaseException] = []
    writing = threading.Event()

    def writer() -> None:
        try:
            for _ in range(400):
                sync.wait_durable(sync.committed())
        except BaseException as exc:
            errors.append(exc)

    def closer() -> None:
        while writing.is_set():
            sync.close()
            time.sleep(0.0001)

    writing.set()
    writers = [threading.Thread(target=writer) for _ in range(4)]
    closing = threading.Thread(target=closer)
    for thread in [*writers, closing]:
        thread.start()
    for thread in writers:
        thread.join(60)
    writing.clear()
    closing.join(10)
    assert errors == []
    counters = read_counters(sqlite_file)
    assert counters["commits"] == 1600 and counters["synced"] == 1600, counters
    sync.close()


def test_normal_synchronous_keeps_no_group_commit(sqlite_file):
    store = Store(f"sqlite:///{sqlite_file}", synchronous="normal")
    store.migrate()
    store.ingest(make_event("BILL_VALIDATE"), ["log"])
    assert read_counters(sqlite_file)["commits"] == 0 and not os.path.exists(sqlite_file + ".sync")
    store.dispose()


@pytest.mark.slow
def test_every_acknowledged_event_survives_kill_9_of_serve_under_load(tmp_path):
    """``serve``'s threads under 12 concurrent clients, gunicorn killed with SIGKILL mid-load:
    every event answered 2xx is in the store, and the writers shared fsyncs."""
    from dolibarr_webhooks.web.gunicorn import SERVE_THREADS
    from dolibarr_webhooks.samples import sample_body

    template = sample_body("BILL_VALIDATE")
    acknowledged: dict[int, str] = {}
    lock, stop = threading.Lock(), threading.Event()

    def post(url: str, ids: range) -> None:
        with requests.Session() as session:
            for object_id in ids:
                if stop.is_set():
                    return
                body = template.replace(b'"id":311', b'"id":%d' % object_id, 1)
                try:
                    response = session.post(url, data=body, timeout=15)
                except requests.RequestException:
                    return  # killed: this answer never came
                if response.status_code == 200:
                    with lock:
                        acknowledged[object_id] = response.json()["id"]

    env = {"DOLIBARR_WEBHOOKS_PLUGINS": "log"}
    with running_service(env=env, worker=False, gunicorn_args=[
            "-k", "dolibarr_webhooks.web.gunicorn.ThreadWorker", "--threads", str(SERVE_THREADS)]) as service:
        path = str(service.workdir / "webhooks.sqlite3")
        url = f"{service.url}/webhook/{WEBHOOKS_TEST_SECRET}"
        clients = [threading.Thread(target=post, args=(url, range(1_000_000 + i, 1_100_000, 12)), daemon=True)
                   for i in range(12)]
        for client in clients:
            client.start()
        try:
            wait_for(lambda: len(acknowledged) >= 400, timeout=120, interval=0.01)
            service.stop("web", signal.SIGKILL)
        finally:
            stop.set()
            for client in clients:
                client.join(30)
        counters = read_counters(path)
        store = Store(f"sqlite:///{path}")
        try:
            stored = {store.show(event_id) is not None for event_id in acknowledged.values()}
        finally:
            store.dispose()
    assert stored == {True}
    assert counters["fsyncs"] < counters["commits"], counters
