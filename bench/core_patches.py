"""Bench-only experiments: candidate fixes to the core, applied by monkeypatching, to
measure them before the lead changes the product. Never imported by the product.

Used as a gunicorn configuration file (``gunicorn -c bench/core_patches.py ...``): gunicorn
executes it in the master before forking, so the patched modules are what each worker
loads. ``BENCH_PATCHES`` names the patches, comma-separated:

- ``to_json``: ``Event.to_json`` builds a shallow dict instead of ``dataclasses.asdict``,
  which deep-copies the whole object (about 0.8 ms of the 15 KB sample, against 0.07 ms).
- ``prepare``: ``Store.ingest`` builds the event row (its JSON payload included) before
  ``BEGIN IMMEDIATE``, so the SQLite write lock is held only for the statements and commit.
- ``flock`` (now built in: ``dolibarr_webhooks.store.WriterQueue``; the patch only checks that
  the revision has it): every SQLite write transaction of the store first takes a blocking
  ``flock`` of ``<database>.lock``. SQLite's
  own busy handler sleeps 1, 2, 5, 10, 15... ms between tries, so a process waiting for a
  lock held 3 ms waits about 8 ms, and under steady load the waiter keeps losing to the
  holder; the kernel wakes a ``flock`` waiter as soon as the lock is released.
- ``worker_normal``: the delivery worker's own connections use ``synchronous=NORMAL`` while
  the web processes keep ``FULL``. In WAL mode the next FULL commit of an ingest syncs the
  worker's earlier frames too; a power loss can only forget a claim or a result, and the
  delivery then runs again, as it would after a lost lease.
- ``normal``: every process uses ``synchronous=NORMAL`` (what ``SQLITE_SYNCHRONOUS=normal``
  does), to compare both policies in one run. An acknowledged event can then be lost on a
  power cut (not on a crash of the process), and Dolibarr never re-sends.

- ``sync_after_unlock``: SQLite commits at ``synchronous=NORMAL`` (no fsync while the write
  lock is held) and each write transaction then ``fdatasync``s the WAL file itself, after the
  lock is released: the commit is as durable when the 2xx goes out, but one process's fsync
  no longer holds up every other writer, and the kernel serves concurrent fsyncs together.

- ``group_commit``: on SQLite, the ingests that wait for the write lock in one process (the
  threads of a ``gthread`` worker) go in together: one transaction, one commit, one fsync
  for all of them. A batch that fails is retried one ingest at a time.

``to_json`` and ``prepare`` are in the core since commit 7b9a17b; they stay here to measure
older revisions.

The delivery worker is not a gunicorn process: ``python bench/core_patches.py worker`` runs
``dolibarr-webhooks worker`` with the same patches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import threading
import time

PATCHES = [p.strip() for p in os.environ.get("BENCH_PATCHES", "").split(",") if p.strip()]


def _to_json(self) -> str:
    data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    data["received_at"] = self.received_at.isoformat()
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _ingest(self, event, plugins, dedup_window: float = 0, remote_addr=None):
    """``Store.ingest`` with the row, JSON payload included, prepared before the transaction.
    Same statements, same results."""
    from sqlalchemy import insert, select, text
    from sqlalchemy.exc import SQLAlchemyError

    from dolibarr_webhooks.store import ACCEPTED, DUPLICATE, IngestResult, StoreError, deliveries, events

    now = time.time()
    plugins = list(plugins)
    received_at = event.received_at.timestamp()
    row = dict(id=event.id, source=event.source, trigger_code=event.trigger_code, sent_code=event.sent_code,
               element=event.element, object_id=event.object_id, ref=event.ref, entity=event.entity,
               received_at=received_at, body_sha256=event.body_sha256, test=event.test,
               status=ACCEPTED, duplicate_of=None, payload=event.to_json(), remote_addr=remote_addr)
    new_deliveries = [self._new_delivery(event.id, p, now) for p in plugins]
    try:
        with self.engine.begin() as conn:
            duplicate_of = None
            if dedup_window > 0 and not event.test:
                if self.is_postgres:
                    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                                 {"key": f"{event.source}:{event.body_sha256}"})
                duplicate_of = conn.execute(
                    select(events.c.id).where(
                        events.c.source == event.source,
                        events.c.body_sha256 == event.body_sha256,
                        events.c.trigger_code == event.trigger_code,
                        events.c.object_id.is_not_distinct_from(event.object_id),
                        events.c.received_at >= received_at - dedup_window,
                        events.c.status == ACCEPTED,
                    ).limit(1)
                ).scalar()
            if duplicate_of:
                row.update(status=DUPLICATE, duplicate_of=duplicate_of)
            conn.execute(insert(events), row)
            if duplicate_of:
                return IngestResult(DUPLICATE, event.id, duplicate_of)
            if new_deliveries:
                conn.execute(insert(deliveries), new_deliveries)
                self._notify(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc.__class__.__doc__ or ''}".strip()) from exc
    if plugins:
        self._wake()
    return IngestResult(ACCEPTED, event.id, None, len(plugins))


def _sync_after_unlock(store_module) -> None:
    original_write = store_module.Store._write

    @contextlib.contextmanager
    def _write(self, *deadline):  # the request deadline since schema version 4's release
        with original_write(self, *deadline) as conn:
            yield conn
        if self._writers is not None:
            try:
                fd = os.open(self.engine.url.database + "-wal", os.O_RDONLY)
            except FileNotFoundError:  # checkpointed and removed: in the synced database file
                return
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    store_module.Store._write = _write


class _Job:
    __slots__ = ("work", "ready", "lead", "result", "error")

    def __init__(self, work):
        self.work, self.ready, self.lead, self.result, self.error = work, threading.Event(), False, None, None


class _GroupCommit:
    def __init__(self, write):
        self._write, self._lock, self._waiting, self._busy = write, threading.Lock(), [], False

    def run(self, work):
        job = _Job(work)
        with self._lock:
            self._waiting.append(job)
            job.lead = not self._busy
            self._busy = True
        if not job.lead:
            job.ready.wait()
        if job.lead:  # first in, or promoted by the previous leader
            with self._lock:
                batch, self._waiting = self._waiting, []
            try:
                self._commit(batch)
            finally:
                with self._lock:
                    if self._waiting:
                        self._waiting[0].lead = True
                        self._waiting[0].ready.set()
                    else:
                        self._busy = False
                for other in batch:
                    if other is not job:
                        other.ready.set()
        if job.error is not None:
            raise job.error
        return job.result

    def _commit(self, batch):
        try:
            with self._write() as conn:
                results = [j.work(conn) for j in batch]
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for j in batch:  # one bad ingest must not fail the others
                self._commit([j])
            return
        for j, r in zip(batch, results):
            j.result = r


def _group_commit(store_module) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    S = store_module
    original_ingest = S.Store.ingest

    def ingest(self, event, plugins, dedup_window=0, remote_addr=None, **deadline):
        if self.is_postgres:
            return original_ingest(self, event, plugins, dedup_window, remote_addr, **deadline)
        if not hasattr(self, "_group"):
            self._group = _GroupCommit(self._write)
        now = time.time()
        plugins = list(plugins)
        dedup = dedup_window > 0 and not event.test
        row = dict(
            id=event.id, source=event.source, trigger_code=event.trigger_code, sent_code=event.sent_code,
            element=event.element, object_id=event.object_id, ref=event.ref, entity=event.entity,
            received_at=event.received_at.timestamp(), body_sha256=event.body_sha256, test=event.test,
            payload=event.to_json(), remote_addr=remote_addr,
        )
        search = dict(since=row["received_at"] - dedup_window, accepted=S.ACCEPTED)

        def work(conn):
            duplicate_of = conn.execute(S._FIND_DUPLICATE, dict(row, **search)).scalar() if dedup else None
            conn.execute(S._INSERT_EVENT, dict(row, status=S.DUPLICATE if duplicate_of else S.ACCEPTED,
                                               duplicate_of=duplicate_of, raw_body=None, error=None))
            if plugins and not duplicate_of:
                conn.execute(S._INSERT_DELIVERY, [self._new_delivery(event.id, p, now) for p in plugins])
            return duplicate_of

        try:
            duplicate_of = self._group.run(work)
        except SQLAlchemyError as exc:
            raise S.StoreError(S.describe_error(exc)) from exc
        if duplicate_of:
            return S.IngestResult(S.DUPLICATE, event.id, duplicate_of)
        if plugins:
            self._wake()
        return S.IngestResult(S.ACCEPTED, event.id, None, len(plugins))

    S.Store.ingest = ingest


def apply(names: list[str]) -> None:
    known = {"to_json", "prepare", "flock", "worker_normal", "normal", "sync_after_unlock", "group_commit"}
    unknown = set(names) - known
    if unknown:
        raise SystemExit(f"unknown BENCH_PATCHES: {', '.join(sorted(unknown))}")
    from dolibarr_webhooks import event as event_module
    from dolibarr_webhooks import store as store_module

    if "to_json" in names:
        event_module.Event.to_json = _to_json
    if "prepare" in names:
        store_module.Store.ingest = _ingest
    if "sync_after_unlock" in names:
        _sync_after_unlock(store_module)
    if "group_commit" in names:
        _group_commit(store_module)
    if {"flock", "worker_normal", "normal", "sync_after_unlock"} & set(names):
        original_init = store_module.Store.__init__
        in_worker = __name__ == "__main__" and sys.argv[1:2] == ["worker"]

        def __init__(self, url, synchronous="FULL", *deadline):
            if "normal" in names or "sync_after_unlock" in names or ("worker_normal" in names and in_worker):
                synchronous = "NORMAL"
            original_init(self, url, synchronous, *deadline)
            if "flock" in names and not hasattr(self, "_writers"):
                raise SystemExit("the flock writers' queue is in the product (dolibarr_webhooks.store.WriterQueue) "
                                 "since it was measured here; this revision predates it")

        store_module.Store.__init__ = __init__


apply(PATCHES)

if __name__ == "__main__":  # the worker, or any CLI command, with the same patches
    from dolibarr_webhooks.cli import main

    main()
