"""How fast the delivery worker drains a backlog: a burst of events stored at once (a mass
action in Dolibarr validates hundreds of invoices), then one worker process delivering them.

    python bench/drain.py [--database sqlite|postgresql|both] [--events 3000] [--concurrency 2,16]
                          [--network-delay MS]

For each store and each ``WORKER_CONCURRENCY``: ``--events`` BILL_VALIDATE events stored
through the receiver's own ingest (plugin ``log``, which writes one line per event), no
worker running; then a real ``dolibarr-webhooks worker`` process starts, and the script
waits until every delivery is delivered. Printed: the seconds from the worker's start to its
first delivery (its start-up), deliveries per second from then to the last, the worker
process's CPU per delivery (start-up included), and on PostgreSQL the database server's.
Nothing else runs meanwhile: under a receiver's load the worker shares the CPU with it.
``--network-delay``: the worker reaches PostgreSQL through ``delay_proxy.py``, which holds
every chunk that many milliseconds each way, as a database on another host would.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import Server, database, log, postgres_cpu, receiver, service_env, table, tree_cpu
from delay_proxy import delayed, round_trip_ms

from dolibarr_webhooks.testing import free_port


def drain(url: str, count: int, concurrency: int, workdir: Path, worker_url: str | None = None) -> dict[str, float]:
    """``worker_url``: the worker's way to the same store (through ``delay_proxy.py``)."""
    service, events = receiver(url)
    for event in events(20_000_000, count):
        service.ingest(event)
    store = service.store
    env = service_env(worker_url or url, workdir, PLUGINS="log", WORKER_CONCURRENCY=str(concurrency))
    server = Server(Path(sys.executable), workdir, env, free_port())
    try:
        database_cpu = None if url.startswith("sqlite") else postgres_cpu()  # the server's own, on PostgreSQL
        started = time.monotonic()
        worker = server.start_worker()
        first = None
        deadline = started + 600
        while True:
            delivered = store.stats()["deliveries"]["delivered"]
            now = time.monotonic()
            if delivered and first is None:
                first, first_count = now, delivered
            if delivered >= count:
                break
            if now > deadline or worker.poll() is not None:
                raise RuntimeError(f"{delivered} of {count} delivered:\n{(workdir / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.02)
        cpu = tree_cpu(worker.pid)
        if database_cpu is not None:
            database_cpu = postgres_cpu() - database_cpu
    finally:
        server.close()
        store.dispose()
    return {"start": first - started, "rate": (count - first_count) / max(now - first, 1e-9),
            "cpu_ms": cpu * 1000 / count,
            "database_cpu_ms": None if database_cpu is None else database_cpu * 1000 / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--concurrency", default="2,16",
                        help="WORKER_CONCURRENCY values, comma-separated (2: the default setting)")
    parser.add_argument("--network-delay", type=float, default=0.0,
                        help="PostgreSQL: milliseconds each way between the worker and the server")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    os.environ.setdefault("DOLIBARR_WEBHOOKS_LOG_LEVEL", "WARNING")  # this process's own lines
    rows = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-drain-") as tmp:
        for kind in kinds:
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                workdir = Path(tmp) / f"{kind}-{concurrency}"
                workdir.mkdir()
                with database(kind) as url, delayed(url, args.network_delay) as worker_url:
                    url = url or f"sqlite:///{workdir / 'webhooks.sqlite3'}"
                    log(f"{kind}: {args.events} events stored, then a worker of concurrency {concurrency}")
                    if worker_url and worker_url != url:
                        log(f"the worker's round trip to PostgreSQL: {round_trip_ms(worker_url):.2f} ms "
                            f"(direct {round_trip_ms(url):.2f} ms)")
                    result = drain(url, args.events, concurrency, workdir, worker_url)
                rows.append([kind, concurrency, f"{result['start']:.2f}", f"{result['rate']:.0f}",
                             f"{result['cpu_ms']:.2f}",
                             "-" if result["database_cpu_ms"] is None else f"{result['database_cpu_ms']:.2f}"])
    print(f"# drain: {args.events} BILL_VALIDATE events stored at once, then one worker process (plugin log)")
    print()
    print(table(rows, ["store", "worker concurrency", "first delivery s", "deliveries/s", "worker cpu ms/delivery",
                       "server cpu ms/delivery"]))
    print("\n(server cpu: PostgreSQL's processes on this machine, its backends included, over the drain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
