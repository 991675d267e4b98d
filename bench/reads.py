"""How long the store's everyday reads take on PostgreSQL, the server near or far: the worker's
look for due deliveries (``has_due``, at every wake-up), ``stats`` and the dead list.

    python bench/reads.py [--network-delay MS] [--events 50] [--repeat 200]

``--events`` BILL_VALIDATE events are stored through the receiver's own ingest, then each
read runs ``--repeat`` times in this process on a worker's store (``Store.for_worker``);
printed: the median of each, in milliseconds. ``--network-delay``: the reads go through
``delay_proxy.py``, which holds every chunk that many milliseconds each way, as a database on
another host would. Run it on two revisions to compare them.
"""

from __future__ import annotations

import argparse
import os
import sys

from _common import log, median_ms, postgres_database, receiver, table
from delay_proxy import delayed, round_trip_ms

from dolibarr_webhooks.store import DEAD, Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network-delay", type=float, default=0.0, help="milliseconds each way")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ.setdefault("DOLIBARR_WEBHOOKS_LOG_LEVEL", "WARNING")
    with postgres_database() as url, delayed(url, args.network_delay) as reads_url:
        service, events = receiver(url)
        for event in events(60_000_000, args.events):
            service.ingest(event)
        worker_store = Store.for_worker(reads_url)
        try:
            log(f"{args.events} events stored; a round trip takes {round_trip_ms(reads_url):.2f} ms")
            rows = [[name, f"{median_ms(call, args.repeat):.3f}"] for name, call in (
                ("has_due", lambda: worker_store.has_due(["log"])),
                ("stats", worker_store.stats),
                ("dead list", lambda: worker_store.list_deliveries(status=DEAD)),
            )]
        finally:
            worker_store.dispose()
            service.store.dispose()
    away = f", {args.network_delay} ms away each way" if args.network_delay else ""
    print(f"# reads: PostgreSQL{away}, medians of {args.repeat}")
    print()
    print(table(rows, ["read", "ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
