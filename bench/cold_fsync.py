"""The store's own part of an answer, on this disk: the same SQLite transaction (a 6 KB INSERT
and its commit, ``synchronous=NORMAL`` in WAL mode) and the ``fdatasync`` of the log that
makes it durable, back to back and after pauses, as the group commit runs them.

    python bench/cold_fsync.py [--repeat 12] [--cpus 0,1]

Printed, for each CPU the measure runs on in turn (``--cpus``: each of the machine's by
default): the median of each part after each pause, 200 commits a pause up to 1 ms,
``--repeat`` after 0.1 and 1.1 s. "quiet" is the time the disk really had nothing to do
before the commit, from the end of the previous fsync (a short ``sleep`` oversleeps). Then
the interrupt line the disk's completions came on, and how they split between the CPUs.

A sync after a pause can cost several times the same sync back to back (a disk, or a
virtual machine's host, that goes idle); an answer at c=1 starts its sync only after its
request's parse, scrub and transaction, so it meets whatever a disk quiet that long costs.
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

SHORT_PAUSES = (0.0, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001)  # 200 commits each
LONG_PAUSES = (0.1, 1.1)  # --repeat commits each
HEADERS = ["pause before each", "commits", "quiet ms", "transaction ms", "fdatasync ms"]


def interrupts() -> dict[str, list[int]]:
    """Each interrupt line's count per CPU, from /proc/interrupts ({} where it cannot be read)."""
    try:
        with open("/proc/interrupts") as fh:
            ncpu = len(fh.readline().split())
            counts = {}
            for line in fh:
                fields = line.split()
                if len(fields) > ncpu + 1 and fields[0].rstrip(":").isdigit():
                    counts[" ".join(fields[ncpu + 1:])] = [int(field) for field in fields[1:ncpu + 1]]
            return counts
    except (OSError, ValueError):
        return {}


def busiest_line(before: dict[str, list[int]], after: dict[str, list[int]]) -> str:
    """The interrupt line that fired most between the two readings, and its split by CPU."""
    deltas = {name: [b - a for a, b in zip(before.get(name, [0] * len(counts)), counts)]
              for name, counts in after.items()}
    if not deltas:
        return "interrupts: /proc/interrupts not readable"
    name, split = max(deltas.items(), key=lambda item: sum(item[1]))
    return f"interrupts during the run: most on '{name}': " + ", ".join(
        f"CPU{cpu} {count}" for cpu, count in enumerate(split))


def measure(path: str, schedule: list[tuple[float, int]]) -> list[list[str]]:
    """A new SQLite file at ``path``: for each ``(pause, count)``, ``count`` commits each after
    ``pause`` seconds; a row of medians each (``HEADERS``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, payload BLOB)")
    payload = os.urandom(6000)
    last_sync = time.perf_counter()

    def commit_and_sync() -> tuple[float, float, float]:
        nonlocal last_sync
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
        quiet, last_sync = committed - last_sync, time.perf_counter()
        return quiet * 1000, (committed - started) * 1000, (last_sync - committed) * 1000

    rows = []
    for pause, count in schedule:
        times = []
        for _ in range(count):
            if pause:
                time.sleep(pause)
            times.append(commit_and_sync())
        medians = [f"{statistics.median(t[part] for t in times):.3f}" for part in range(3)]
        rows.append([f"{pause * 1000:g} ms", count, *medians])
    conn.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=12, help="commits after each long pause")
    parser.add_argument("--cpus", default=None, help="the CPUs to run on in turn, e.g. 0,1 (default: each)")
    args = parser.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    cpus = [int(cpu) for cpu in args.cpus.split(",")] if args.cpus else allowed
    schedule = [(pause, 200) for pause in SHORT_PAUSES] + [(pause, args.repeat) for pause in LONG_PAUSES]
    print("# cold_fsync: one SQLite transaction, then fdatasync of its log, after each pause (medians)")
    before = interrupts()
    # Where the other benchmarks keep their stores (tempfile's folder).
    with tempfile.TemporaryDirectory(prefix="dw-bench-fsync-") as folder:
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            rows = measure(os.path.join(folder, f"cold-{cpu}.sqlite3"), schedule)
            print()
            print(f"on CPU {cpu}:")
            print(table(rows, HEADERS))
    os.sched_setaffinity(0, allowed)
    print()
    print(busiest_line(before, interrupts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
