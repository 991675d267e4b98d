"""The store's own part of a quiet answer, on this disk: the same SQLite transaction (a 6 KB
INSERT and its commit, ``synchronous=NORMAL`` in WAL mode) and the ``fdatasync`` of the log
that makes it durable, back to back and after pauses, as the group commit runs them.

    python bench/cold_fsync.py [--repeat 12]

Printed: the median of each at each pause (200 back to back and with 1 ms pauses; ``--repeat``
after 0.1 and 1.1 s). A machine whose CPUs and disk went idle takes longer for the same work.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time

from _common import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=12, help="commits after each long pause")
    args = parser.parse_args(argv)
    # Where the other benchmarks keep their stores (tempfile's folder).
    with tempfile.TemporaryDirectory(prefix="dw-bench-fsync-") as folder:
        path = os.path.join(folder, "cold.sqlite3")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, payload BLOB)")
        payload = os.urandom(6000)

        def commit_and_sync() -> tuple[float, float]:
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO events (payload) VALUES (?)", (payload,))
            conn.execute("COMMIT")
            committed = time.perf_counter()
            fd = os.open(path + "-wal", os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            return (committed - started) * 1000, (time.perf_counter() - committed) * 1000

        rows = []
        for pause, count in ((0.0, 200), (0.001, 200), (0.1, args.repeat), (1.1, args.repeat)):
            times = []
            for _ in range(count):
                time.sleep(pause)
                times.append(commit_and_sync())
            rows.append([f"{pause:g} s", count, f"{statistics.median(t for t, _ in times):.3f}",
                         f"{statistics.median(s for _, s in times):.3f}"])
        conn.close()
    print("# cold_fsync: one SQLite transaction, then fdatasync of its log, after each pause")
    print()
    print(table(rows, ["pause before each", "commits", "transaction ms", "fdatasync ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
