"""End-to-end latency, from the POST to the moment a plugin's handler runs, with an idle worker.

    python bench/latency.py [--database sqlite|postgresql|both] [--events 200]

A one-module plugin (``benchstamp``) is pip-installed into a throw-away virtual environment
(``overlay_venv``: it sees this checkout's core) and found through its
real entry point; its handler appends ``EVENT_ID TIME`` to a file. gunicorn and
``dolibarr-webhooks worker`` run from that environment. Events are posted one at a time, each
on a new connection as Dolibarr does; the next one leaves only after the handler of the
previous one ran, plus a random gap, so the worker is always idle when an event arrives and
the arrival falls anywhere in its polling cycle. Timings come from the client's clock, the
plugin's stamp and the store (``received_at``, the attempt's ``started_at``,
``delivered_at``), all on this machine's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _common import (GunicornSettings, Summary, database, log, plugin_venv, post_once, product_server, table,
                     unique_body)

TARGET_MEDIAN_MS = 100.0

STAMP_PLUGIN = '''
"""Bench plugin: records when its handler ran, one line per event: ``EVENT_ID UNIX_TIME``."""

import os
import time

from dolibarr_webhooks import hookimpl


@hookimpl
def handle_event(event):
    # The file from the environment, not the hook's settings: the same plugin then runs on a
    # core of before or after read_settings (bench/before_after.py --baseline).
    ran = time.time()
    with open(os.environ["DOLIBARR_WEBHOOKS_BENCHSTAMP_FILE"], "a") as fh:
        fh.write(f"{event.id} {ran:.6f}\\n")
'''


def post(port: int, path: str, body: bytes) -> tuple[float, float, str]:
    """(sent at, answered at, event id) of one POST on a fresh connection."""
    sent = time.time()
    status, data = post_once(port, path, body)
    answered = time.time()
    if not 200 <= status < 300:
        raise RuntimeError(f"POST answered {status}: {data[:300]!r}")
    return sent, answered, json.loads(data)["id"]


class Stamps:
    """Reads the plugin's stamp file as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.seen: dict[str, float] = {}

    def wait_for(self, event_id: str, timeout: float = 15.0) -> float:
        deadline = time.monotonic() + timeout
        while event_id not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the handler did not run for {event_id} within {timeout}s")
            if self.path.exists():
                with open(self.path) as fh:
                    fh.seek(self.offset)
                    chunk = fh.read()
                complete = chunk[:chunk.rfind("\n") + 1]
                self.offset += len(complete)
                for line in complete.splitlines():
                    eid, ran = line.split()
                    self.seen[eid] = float(ran)
            if event_id not in self.seen:
                time.sleep(0.001)
        return self.seen[event_id]


def store_times(database_url: str, ids: list[str]) -> dict[str, tuple[float, float, float]]:
    """(received_at, attempt started_at, delivered_at) of each event, read with the core's tables."""
    from sqlalchemy import select

    from dolibarr_webhooks.store import attempts, deliveries, events
    from dolibarr_webhooks.store.engine import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect().execution_options(readonly=True) as conn:
            rows = conn.execute(
                select(events.c.id, events.c.received_at, attempts.c.started_at, deliveries.c.delivered_at)
                .join(deliveries, deliveries.c.event_id == events.c.id)
                .join(attempts, attempts.c.delivery_id == deliveries.c.id)
                .where(events.c.id.in_(ids), attempts.c.number == 1)
            ).all()
    finally:
        engine.dispose()
    return {row.id: (row.received_at, row.started_at, row.delivered_at) for row in rows}


def measure(kind: str, python: Path, events: int, warmup: int, gap: tuple[float, float], body: bytes,
            workdir: Path, core: Path | None = None) -> dict[str, Summary]:
    """``core``: another version of the core package (``_common.core_at``) instead of this checkout's."""
    stamp_file = workdir / f"stamps-{kind}{'-' + core.name if core else ''}.txt"
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(database(kind))
        server = stack.enter_context(product_server(
            GunicornSettings(), database_url=url, worker=True, python=python, core=core,
            PLUGINS="benchstamp", BENCHSTAMP_FILE=str(stamp_file)))
        database_url = server.env["DOLIBARR_WEBHOOKS_DATABASE_URL"]
        stamps = Stamps(stamp_file)
        path = f"/webhook/{server.secret}"
        series = {name: Summary() for name in ("POST -> 2xx", "POST -> handler ran", "received_at -> claimed",
                                               "claimed -> handler ran", "POST -> delivered_at")}
        sent_at: dict[str, tuple[float, float]] = {}
        for i in range(warmup + events):
            unique = unique_body(body, 900000 + i)
            sent, answered, event_id = post(server.port, path, unique)
            stamps.wait_for(event_id)
            if i >= warmup:
                sent_at[event_id] = (sent, answered)
            time.sleep(random.uniform(*gap))
        times = store_times(database_url, list(sent_at))
        for event_id, (sent, answered) in sent_at.items():
            received, claimed, delivered = times[event_id]
            ran = stamps.seen[event_id]
            series["POST -> 2xx"].add(answered - sent)
            series["POST -> handler ran"].add(ran - sent)
            series["received_at -> claimed"].add(claimed - received)
            series["claimed -> handler ran"].add(ran - claimed)
            series["POST -> delivered_at"].add(delivered - sent)
        return series


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--gap", default="0.02,0.12", help="random gap between events, seconds MIN,MAX")
    args = parser.parse_args(argv)
    gap = tuple(float(x) for x in args.gap.split(","))
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    from dolibarr_webhooks.samples import sample_body

    body = sample_body("BILL_VALIDATE")
    results = {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-latency-") as tmp:
        workdir = Path(tmp)
        log("installing the benchstamp plugin into a virtual environment")
        python = plugin_venv(workdir, "benchstamp", STAMP_PLUGIN)
        for kind in kinds:
            log(f"{kind}: {args.warmup} warm-up events, then {args.events} measured")
            results[kind] = measure(kind, python, args.events, args.warmup, gap, body, workdir)

    print(f"# latency: {args.events} BILL_VALIDATE events one at a time, gaps {gap[0]:g}-{gap[1]:g} s, "
          f"idle worker (default settings: on SQLite woken through <database>.wake, synchronous FULL), gunicorn "
          f"{GunicornSettings().describe()}, plugin benchstamp through its entry point")
    rows = []
    for kind, series in results.items():
        for name, summary in series.items():
            rows.append([kind, name, *summary.row()])
    print()
    print(table(rows, ["database", "interval", "n", "median ms", "p95 ms", "p99 ms", "max ms"]))
    print()
    for kind, series in results.items():
        med = float(series["POST -> handler ran"].row()[1])
        print(f"{kind}: median POST -> handler {med:.1f} ms (target < {TARGET_MEDIAN_MS:g} ms): "
              f"{'met' if med < TARGET_MEDIAN_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
