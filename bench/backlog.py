"""Do a purge and a replay of a large backlog keep the answers to Dolibarr within their deadline?

    python bench/backlog.py [--database sqlite|postgresql|both] [--events 200000] [--baseline REV]

The worker purges what retention lets go every ten minutes: in steady state ten minutes of
events. The first purge after an upgrade, a retention made shorter or a worker stopped for
days has the whole backlog to delete; an operator replays a day of dead deliveries after an
outage, or a month of delivered ones for a plugin's new target. For each store (and with
``--baseline``, the core of that git revision too, in its own interpreter): a store filled
with ``--events`` accepted events older than the retention, with their delivered
deliveries (``growth.fill``); then ``Store.purge`` of the default retention, and, on as
many events filled again, ``Store.replay`` of every delivered delivery, each while a thread
ingests the 15.6 KB BILL_VALIDATE sample every 10 ms with serve's request deadline.
Printed for each: the rows done, the seconds, how much the process grew meanwhile (VmHWM,
reset before), and the ingests meanwhile: how many, p50, p99 and the slowest, and how many
failed (``StoreError``: a 503 to Dolibarr, whose user's action is rolled back).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import BENCH_DIR, core_at, database, log, path_first, table, unique_body

PACE = 0.010  # seconds between two ingests


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(url: str, events: int) -> list[dict]:
    """Runs in a fresh interpreter (the core under test first on the path): the purge, then
    the replay."""
    from growth import fill

    from dolibarr_webhooks.settings import SETTINGS
    from dolibarr_webhooks.store import DELIVERED, Store

    retention = next(parse(default) for default, parse, _ in [SETTINGS["RETENTION"]])
    store = Store(url)
    store.migrate()
    fill(store, events, 0)
    found = [dict(operation="purge", **under_ingest(store, lambda: store.purge(retention)))]
    fill(store, events, events)
    found.append(dict(operation="replay", **under_ingest(store, lambda: store.replay(statuses=[DELIVERED]))))
    store.dispose()
    return found


def under_ingest(store, operation) -> dict:
    """``operation()``'s rows and seconds, while a thread ingests at ``PACE``."""
    from dolibarr_webhooks.pipeline.parse import event_from_body
    from dolibarr_webhooks.samples import sample_body
    from dolibarr_webhooks.settings import SETTINGS
    from dolibarr_webhooks.store import StoreError

    deadline = next(parse(default) for default, parse, _ in [SETTINGS["REQUEST_DEADLINE"]])
    body = sample_body("BILL_VALIDATE")
    latencies, failures, stop = [], [], threading.Event()

    def ingest() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            event = event_from_body(unique_body(body, 50_000_000 + n))
            started = time.monotonic()
            try:
                store.ingest(event, ["log"], deadline=started + deadline)
            except StoreError as exc:
                failures.append(str(exc))
            latencies.append((time.monotonic() - started) * 1000)
            time.sleep(max(0.0, PACE - (time.monotonic() - started)))

    thread = threading.Thread(target=ingest)
    thread.start()
    time.sleep(0.5)  # the ingests going before the operation starts
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here
    before, started, rss = len(latencies), time.monotonic(), _rss_mb("VmRSS")
    rows = operation()
    seconds = time.monotonic() - started
    grew = _rss_mb("VmHWM") - rss
    stop.set()
    thread.join()  # the ingest the operation held up is counted, with the time it waited
    during = sorted(latencies[before:])
    return {"rows": rows, "seconds": seconds, "grew_mb": grew, "ingests": len(during),
            "p50": statistics.median(during) if during else 0.0,
            "p99": during[int(len(during) * 0.99)] if during else 0.0, "max": during[-1] if during else 0.0,
            "failed": len(failures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--baseline", metavar="GIT_REVISION", help="also measure the core of this revision")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.events)))
        return 0

    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-backlog-") as tmp:
        cores = [("working tree", None)]
        if args.baseline:
            cores.insert(0, (f"@{args.baseline}", core_at(args.baseline, Path(tmp) / "baseline")))
        for kind in kinds:
            for name, core in cores:
                with database(kind) as pg_url:
                    url = pg_url or f"sqlite:///{Path(tmp) / (name.strip('@ ') + '.sqlite3')}"
                    env = path_first(dict(os.environ), core, BENCH_DIR)
                    log(f"{kind} {name}: {args.events:,} old events purged, as many replayed, under ingest")
                    done = subprocess.run([sys.executable, __file__, "--events", str(args.events), "--child", url],
                                          env=env, capture_output=True, text=True)
                    if done.returncode:
                        raise SystemExit(done.stderr[-3000:])
                    for found in json.loads(done.stdout.strip().splitlines()[-1]):
                        log(f"  {found}")
                        rows.append([kind, name, found["operation"], f"{found['rows']:,}", f"{found['seconds']:.1f}",
                                     f"{found['grew_mb']:.1f}", found["ingests"], f"{found['p50']:.1f}",
                                     f"{found['p99']:.1f}", f"{found['max']:.0f}", found["failed"]])
    print(f"\n# a purge and a replay of a backlog under ingest (one BILL_VALIDATE every {PACE * 1000:.0f} ms), "
          f"default retention and request deadline\n")
    print(table(rows, ["store", "core", "operation", "rows", "seconds", "grew MB", "ingests", "p50 ms", "p99 ms",
                       "max ms", "failed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
