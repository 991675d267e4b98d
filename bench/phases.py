"""What one answer is made of: the phases of the request path, timed in one process.

    python bench/phases.py [--database sqlite|postgresql|both] [--events 2000] [--warmup 300]
                           [--pause SECONDS]

One request at a time (as at concurrency 1), an answer is its phases one after the other;
``ingest.py`` gives the total a client sees, this script its parts. The product as shipped
runs behind Flask's test client (``cpu_per_event.py``'s set-up: no HTTP server, the access
line written to a pipe its parent reads), each phase timed by ``time.perf_counter()`` around
the product's own functions, wrapped on the running objects:

- **before the store**: from the app's call to ``Store.ingest``, in three parts: to the parse
  (the request's checks, authentication, reading the body), the parse and the scrub
  (``parse.parse_body``), and the event (its identity, label and hash, to the store's call);
- **the store**, in parts: the row (the event's JSON, compressed on SQLite), the wait for the
  transaction (the group commit's queue; on SQLite the writers' turn), the transaction
  (on SQLite its statements and COMMIT, on PostgreSQL the round trip to the ingest function
  and its commit); on SQLite then the turn left and the checkpoint's look, the ``fdatasync``
  of the log, and the batch answered (the workers woken);
- **after the store**: until the app returns the answer (the view's outcome and metrics, its
  JSON, Flask's response and teardown);
- **after the answer**: until the response is closed (the access line, off a client's wait;
  here with the test client's own reading of the answer).

Then ``parse_body`` alone on the same bodies, back to back: what the parse costs when
nothing ran between two, against its part of the request, where the request's other work has
left the caches and the branch predictors to other code. On SQLite it also times each
statement of the ingest's transaction. Medians over
``--events`` requests after ``--warmup``. ``--pause``: the measured requests come that many
seconds apart, as a quiet shop's Dolibarr posts (``quiet.py`` gives their whole answer). A
wrapper costs about a microsecond; read the shares, and check a change with
``before_after.py``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import database, in_process_product, log, median, table, unique_body

_STORE = [("before the store", "app", "store"), ("  of it, to the parse", "app", "parse"),
          ("  of it, the parse and the scrub", "parse", "parsed"), ("  of it, the event", "parsed", "store"),
          ("the store: the row", "store", "queued"),
          ("the store: to the transaction", "queued", "begin"), ("the store: the transaction", "begin", "ended")]
_ANSWER = [("after the store, to the answer", "stored", "answered"), ("the app, in all", "app", "answered"),
           ("after the answer (closing)", "answered", "closed")]
PHASES = {  # (label, from mark, to mark), by store
    "sqlite": _STORE + [("the store: to the fsync", "ended", "sync"), ("the store: the fsync", "sync", "synced"),
                        ("the store: after the fsync", "synced", "stored")] + _ANSWER,
    "postgresql": _STORE + [("the store: after the transaction", "ended", "stored")] + _ANSWER,
}


def _timed(call, marks: dict[str, float], before: str, after: str | None):
    """``call``, noting ``time.perf_counter()`` in ``marks`` under ``before`` as it starts and
    ``after`` (if any) as it returns."""
    def wrapper(*args, **kwargs):
        marks[before] = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            if after:
                marks[after] = time.perf_counter()
    return wrapper


def child(kind: str, url: str, events: int, warmup: int, pause: float = 0.0) -> dict:
    """Runs in a fresh interpreter: the phases' medians (us) and the statements' (SQLite)."""
    from dolibarr_webhooks.pipeline import parse
    from dolibarr_webhooks.samples import sample_body
    from dolibarr_webhooks.store import sqlite_fast

    app, client, path = in_process_product(url)
    marks: dict[str, float] = {}
    store = app.extensions["dolibarr_webhooks"].store
    store.ingest = _timed(store.ingest, marks, "store", "stored")
    committer = store.committer
    committer.run = _timed(committer.run, marks, "queued", None)
    committer._transaction = _timed(committer._transaction, marks, "begin", "ended")
    app.wsgi_app = _timed(app.wsgi_app, marks, "app", "answered")
    parse_body = parse.parse_body
    parse.parse_body = _timed(parse_body, marks, "parse", "parsed")
    statements: dict[str, list[float]] = collections.defaultdict(list)
    if not store.is_postgres:  # the fsync, and every statement run on the driver's cursor
        committer.durable._sync_log = _timed(committer.durable._sync_log, marks, "sync", "synced")
        run = sqlite_fast._run

        def timed_run(conn, sql, call, values):
            started = time.perf_counter()
            try:
                return run(conn, sql, call, values)
            finally:
                statements[" ".join(sql.split()[:3])].append(time.perf_counter() - started)

        sqlite_fast._run = timed_run
    body = sample_body("BILL_VALIDATE")
    phases: dict[str, list[float]] = collections.defaultdict(list)
    cpu = 0.0
    for i in range(warmup + events):
        raw = unique_body(body, 10_000_000 + i)
        if pause and i >= warmup:
            time.sleep(pause)
        marks.clear()
        started = time.process_time()
        response = client.post(path, data=raw)
        marks["closed"] = time.perf_counter()
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.data[:300]!r}")
        if i < warmup:
            statements.clear()
            continue
        cpu += time.process_time() - started
        for label, start, end in PHASES[kind]:
            if start in marks and end in marks:
                phases[label].append(marks[end] - marks[start])
    # The same parse on the same bodies, back to back: what it costs when nothing else ran
    # between two (the request's other work leaves it colder caches).
    alone = []
    for i in range(warmup + events):
        raw = unique_body(body, 10_000_000 + i)
        started = time.perf_counter()
        parse_body(raw)
        alone.append(time.perf_counter() - started)
    return {"phases": {label: median(values) * 1e6 for label, values in phases.items()},
            "statements": {sql: [len(values) / events, median(values) * 1e6] for sql, values in statements.items()},
            "cpu": cpu / events * 1e6, "parse alone": median(alone[warmup:]) * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.0,
                        help="seconds of quiet before each measured request (default none)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.events, args.warmup, args.pause)))
        return 0

    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    with tempfile.TemporaryDirectory(prefix="dw-bench-phases-") as tmp:
        for kind in kinds:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(database(kind)) or f"sqlite:///{Path(tmp) / 'phases.sqlite3'}"
                log(f"{kind}: {args.warmup} + {args.events} requests")
                done = subprocess.run([sys.executable, __file__, "--child", kind, url, "--events", str(args.events),
                                       "--warmup", str(args.warmup), "--pause", str(args.pause)],
                                      capture_output=True, text=True, timeout=900 + args.events * args.pause, cwd=tmp)
                if done.returncode:
                    raise RuntimeError(done.stderr[-3000:])
                result = json.loads(done.stdout.strip().splitlines()[-1])
            whole = result["phases"].get("the app, in all") or 1
            print(f"\n# {kind}: the phases of one BILL_VALIDATE request (15.6 KB), one at a time, medians of "
                  f"{args.events}{f', {args.pause:g} s apart' if args.pause else ''}; "
                  f"CPU {result['cpu']:.0f} us a request")
            print(table([[label, f"{us:.0f}", f"{us / whole:.0%}"] for label, us in result["phases"].items()],
                        ["phase", "us", "of the app"]))
            print(f"the parse and the scrub alone, back to back: {result['parse alone']:.0f} us")
            if result["statements"]:
                print()
                print(table([[sql, f"{count:.1f}", f"{us:.0f}"] for sql, (count, us) in result["statements"].items()],
                            ["statement", "a request", "us"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
