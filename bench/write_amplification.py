"""What the store writes for one event: the write-ahead log behind each acknowledgement, and
the room the event then takes.

    python bench/write_amplification.py [--database sqlite|postgresql|both] [--stored 3000] [--events 20]

Each event costs its commit the log it writes, and its checkpoint the copy of that log into
the database file: on SQLite, COMMIT's ``pwrite`` of every page the event changed, the fsync
of those bytes and the checkpoint thread's copy were a quarter of a request's time at c=1
(issue #15). A store of ``--stored`` events (BILL_VALIDATE bodies, through the receiver's
own ingest, one plugin whose deliveries a worker in this process then makes, as in
production) then takes ``--events`` more, one commit each, as at c=1.

- On disk: the store's size divided by the events it holds, their deliveries and attempts
  included (SQLite: the file, its log copied in; PostgreSQL: every table with its indexes
  and TOAST).
- SQLite: the log's frames are read back: frames (pages) and bytes per event, and which
  table or index each page belongs to (the ``dbstat`` table, when SQLite has it).
- PostgreSQL: the bytes of log per event (``pg_current_wal_lsn``, so whatever else the
  server runs meanwhile is counted too).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sqlite3
import struct
import sys
import tempfile
import time
from pathlib import Path

from _common import database, log, receiver, table

from dolibarr_webhooks.samples import sample_body

_WAL_HEADER, _FRAME_HEADER = 32, 24


def sqlite_frames(path: str) -> list[tuple[int, bool]]:
    """(page number, whether the frame ends a commit) of each frame of ``path``'s log written
    since it was last started again: a frame whose salts differ from the log's is older."""
    data = Path(path + "-wal").read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    frames, offset = [], _WAL_HEADER
    while offset + _FRAME_HEADER <= len(data) and data[offset + 8:offset + 16] == salts:
        page, database_size = struct.unpack(">II", data[offset:offset + 8])
        frames.append((page, database_size != 0))
        offset += _FRAME_HEADER + page_size
    return frames


def fill(service, events, count: int) -> None:
    """``count`` events stored, and their deliveries made (the attempts the worker records)."""
    for event in events(10_000_000, count):
        service.ingest(event)
    service.make_worker("bench").run(stop_after_idle=0.5)


def measure_sqlite(stored: int, count: int, workdir: Path) -> dict:
    path = str(workdir / "amplification.sqlite3")
    service, events = receiver(f"sqlite:///{path}")
    fill(service, events, stored)
    # The measured commits write the log from its start, with no checkpoint copying it
    # meanwhile (the product's thread, nor SQLite's at 1,000 pages): every frame is still there.
    checkpoints = service.store.committer.checkpoints
    checkpoints.pages = sys.maxsize
    checkpoints.close()
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:  # busy: a checkpoint ran
            time.sleep(0.1)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        used = page_size * (conn.execute("PRAGMA page_count").fetchone()[0]
                            - conn.execute("PRAGMA freelist_count").fetchone()[0])
    for event in events(20_000_000, count):
        service.ingest(event)
    frames = sqlite_frames(path)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        try:
            owner = {page: name for name, page in conn.execute("SELECT name, pageno FROM dbstat")}
        except sqlite3.OperationalError:  # SQLite built without the dbstat table
            owner = {}
    commits = sum(1 for _, last in frames if last)
    if commits != count:
        raise RuntimeError(f"{commits} commits in the log for {count} events: something else wrote")
    by_tree = collections.Counter(owner.get(page, "?") for page, _ in frames)
    return {"commits": commits, "frames": len(frames) / count, "disk": used / stored,
            "bytes": len(frames) * (_FRAME_HEADER + page_size) / count,
            "by_tree": {name: n / count for name, n in by_tree.most_common()}}


def measure_postgresql(stored: int, count: int, url: str) -> dict:
    service, events = receiver(url)
    fill(service, events, stored)
    with service.store.engine.connect() as conn:
        used = conn.exec_driver_sql(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = current_schema()").scalar()
        before = conn.exec_driver_sql("SELECT pg_current_wal_lsn()").scalar()
        for event in events(20_000_000, count):
            service.ingest(event)
        written = conn.exec_driver_sql(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{before}')").scalar()
    return {"commits": count, "bytes": float(written) / count, "disk": float(used) / stored}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--stored", type=int, default=3000, help="events stored before the measure")
    parser.add_argument("--events", type=int, default=20, help="events measured, one commit each")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    rows, trees = [], None
    with tempfile.TemporaryDirectory(prefix="dw-bench-amplification-") as tmp:
        os.environ.setdefault("DOLIBARR_WEBHOOKS_LOG_LEVEL", "WARNING")
        for kind in kinds:
            log(f"{kind}: {args.stored} events stored, then {args.events} measured")
            with database(kind) as url:
                if kind == "sqlite":
                    result = measure_sqlite(args.stored, args.events, Path(tmp))
                    trees = result["by_tree"]
                else:
                    result = measure_postgresql(args.stored, args.events, url)
            rows.append([kind, f"{result['disk'] / 1024:.1f}", result["commits"],
                         f"{result['frames']:.1f}" if "frames" in result else "-", f"{result['bytes'] / 1024:.1f}"])
    body = len(sample_body("BILL_VALIDATE"))
    print(f"# write amplification: the room an event takes and the log it writes (BILL_VALIDATE, {body} bytes, "
          f"one plugin, delivered), one commit per event, after {args.stored} events")
    print()
    print(table(rows, ["store", "KB on disk per event", "commits", "pages of log per event", "KB of log per event"]))
    if trees:
        print()
        print("SQLite's pages per event, by table or index:")
        print(table([[name, f"{n:.1f}"] for name, n in trees.items()], ["table or index", "pages"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
