"""Does the answer to Dolibarr, and the operator's commands, stay as fast as the store grows?

    python bench/growth.py [--database sqlite|postgresql|both] [--sizes 0,100000,1000000]
                           [--duration 4]

For each store, one real gunicorn (2 sync workers: one request at a time per process, so a
point follows the store, not the batching of threads) over a store that is
filled between the points, with the rows a year of a busy Dolibarr leaves: accepted events
(a 1.2 KB third-party payload each) and their delivered deliveries, one in a thousand dead.
At each size: ``wrk`` posts the 15.6 KB BILL_VALIDATE sample at c=1 and c=16 (p50, p99 of
the acknowledgement), their deliveries are marked delivered (the worker keeping up), then,
in this process, the store calls behind ``dolibarr-webhooks
stats``, ``deliveries --status dead``, a ``/metrics`` scrape (``queue_gauges``) and the
worker's claim of one due delivery, each timed
over several calls (median). Nothing is asserted: the figures are printed side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import GunicornSettings, Wrk, database, log, median_ms, product_server, settle, table

from dolibarr_webhooks import fastjson
from dolibarr_webhooks.ids import new_event_id
from dolibarr_webhooks.store.gauges import queue_gauges
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.store import DEAD, DELIVERED, PENDING, Store, deliveries, events

BATCH = 5000


def fill(store: Store, count: int, start: int) -> None:
    """Add ``count`` accepted events with one finished delivery each, received over the past year."""
    payload = fastjson.dumps({"trigger_code": "COMPANY_CREATE",
                              "object": fastjson.loads(sample_body("COMPANY_CREATE"))["object"]})
    now = time.time()
    for first in range(start, start + count, BATCH):
        numbers = range(first, min(first + BATCH, start + count))
        rows, dels = [], []
        for n in numbers:
            received = now - 365 * 86400 * (1 - n / 2_000_000)
            event_id = new_event_id(received)
            rows.append(dict(id=event_id, source="default", trigger_code="COMPANY_CREATE", sent_code=None,
                             element="societe", object_id=str(n), ref=None, entity="1", label=f"Company {n}",
                             received_at=received, body_sha256=uuid.uuid4().hex * 2, test=False, status="accepted",
                             duplicate_of=None, payload=payload, raw_body=None, error=None, remote_addr="10.0.0.1"))
            dels.append(dict(event_id=event_id, plugin="log", status=DEAD if n % 1000 == 999 else DELIVERED,
                             attempts=1, runs=1, reclaims=0, next_attempt_at=received, created_at=received,
                             updated_at=received, delivered_at=received))
        with store.engine.begin() as conn:
            conn.execute(events.insert(), rows)
            conn.execute(deliveries.insert(), dels)
    settle(store)


def caught_up(store: Store) -> None:
    """The worker keeping up, as in production: the deliveries of the events wrk posted are
    delivered, so that the figures follow the store's size, not a backlog this bench made."""
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(deliveries.update().where(deliveries.c.status == PENDING)
                     .values(status=DELIVERED, attempts=1, runs=1, updated_at=now, delivered_at=now))


def timed(call) -> float:
    """Median wall milliseconds of 5 calls of ``call``."""
    return median_ms(call, 5)


def claim_one(store: Store) -> None:
    """What the worker does when one delivery is due: create it, claim it, finish it."""
    event_id = f"evt_claim{uuid.uuid4().hex[:24]}"
    now = time.time()
    with store.engine.begin() as conn:
        conn.execute(events.insert(), [dict(id=event_id, source="default", trigger_code="COMPANY_CREATE",
                                            received_at=now, body_sha256="0" * 64, test=False, status="accepted",
                                            payload=fastjson.dumps({"trigger_code": "COMPANY_CREATE", "object": {},
                                                                    "id": event_id}))])
        conn.execute(deliveries.insert(), [dict(event_id=event_id, plugin="log", status=PENDING, attempts=0, runs=0,
                                                reclaims=0, next_attempt_at=now, created_at=now, updated_at=now)])
    started = time.perf_counter()
    claims = store.claim({"log": 1}, "bench", 60)
    claim_one.ms.append((time.perf_counter() - started) * 1000)
    for claim in claims:
        store.finish(claim, DELIVERED, None, None, "bench")


claim_one.ms = []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--duration", type=int, default=4)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-growth-") as tmp:
        wrk = Wrk(Path(tmp))
        for kind in kinds:
            with contextlib.ExitStack() as stack:
                url = stack.enter_context(database(kind)) or f"sqlite:///{Path(tmp) / 'growth.sqlite3'}"
                server = stack.enter_context(product_server(GunicornSettings(2, "sync", 1), database_url=url))
                store = Store(url)
                stack.callback(store.dispose)
                filled = 0
                for size in sizes:
                    started = time.time()
                    fill(store, max(0, size - filled), filled)
                    filled = max(filled, size)
                    # PostgreSQL: its events counted into the tallies, as the worker does every
                    # minute, from the first (fill wrote a past year after the fact).
                    store.fold_events(again=True)
                    log(f"{kind}: {size} events stored ({time.time() - started:.0f} s to fill)")
                    wrk.run(server.webhook_url, 16, 1)  # warm-up: connections, caches, the first plans
                    c1 = wrk.run(server.webhook_url, 1, args.duration)
                    c16 = wrk.run(server.webhook_url, 16, args.duration)
                    caught_up(store)
                    claim_one.ms.clear()
                    for _ in range(5):
                        claim_one(store)
                    rows.append([kind, f"{size:,}", f"{c1.p50_ms:.2f}", f"{c1.p99_ms:.2f}", f"{c16.p50_ms:.1f}",
                                 f"{c16.p99_ms:.1f}", f"{timed(store.stats):.1f}",
                                 f"{timed(lambda: store.list_deliveries(status=DEAD)):.1f}",
                                 f"{timed(lambda: queue_gauges(store)):.2f}",
                                 f"{statistics.median(claim_one.ms):.2f}"])
                    log(" | ".join(rows[-1]))
    print()
    print(table(rows, ["store", "events", "ack p50 c=1", "ack p99 c=1", "ack p50 c=16", "ack p99 c=16",
                       "stats ms", "dead list ms", "/metrics store ms", "claim ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
