"""``dolibarr-webhooks serve`` as it ships: requests answered while the delivery thread of each
web process delivers them, side by side with another revision.

    python bench/serve.py [--baseline GIT_REVISION] [--database sqlite|postgresql]
                          [--concurrency 1,16] [--duration 8] [--rounds 2]

``ingest.py --serve`` runs serve's gunicorn settings without its delivery threads, which
``serve`` starts from its own configuration. Here the real command runs (plugin ``log``), one
server at a time, the working tree's and, with ``--baseline``, that revision's core, alternated
over the rounds, each on a new store: wrk posts at each concurrency for ``--duration`` seconds,
after a warm-up and a few idle seconds in which the backlog it left is delivered; the events
delivered during the point are counted in the store. Printed per point: req/s, p50, p99, the
server's CPU per request (every process of serve, delivery threads included) and deliveries
per second.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from _common import Server, Wrk, core_at, database, log, median, path_first, service_env, table

from dolibarr_webhooks.store import libpq_url
from dolibarr_webhooks.testing import free_port, wait_for_port


def delivered_count(url: str) -> int:
    """Deliveries delivered so far, read from the store."""
    query = "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
    if url.startswith("sqlite"):
        import sqlite3

        with contextlib.closing(sqlite3.connect(url.split("///", 1)[1], timeout=30)) as conn:
            return conn.execute(query).fetchone()[0]
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(query).fetchone()[0]


def measure(url: str, workdir: Path, core: Path | None, concurrencies: list[int], seconds: int) -> dict:
    server = Server(Path(sys.executable), workdir, path_first(service_env(url, workdir, PLUGINS="log"), core),
                    free_port())
    try:
        process = server.start("serve", [str(server.bin / "dolibarr-webhooks"), "serve", "--host", "127.0.0.1",
                                         "--port", str(server.port)])
        wait_for_port(server.port, process=process)
        wrk = Wrk(workdir)
        wrk.run(server.webhook_url, 16, 2)  # every process has imported the application
        points = {}
        for connections in concurrencies:
            time.sleep(3)  # the warm-up's backlog, delivered
            before, started = delivered_count(url), time.monotonic()
            result = wrk.run(server.webhook_url, connections, seconds, server_pid=process.pid)
            delivered = (delivered_count(url) - before) / (time.monotonic() - started)
            points[connections] = (result, delivered)
        return points
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="GIT_REVISION", help="also run the core package of this revision")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[str, int], list] = {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-serve-") as tmp:
        cores: list[tuple[str, Path | None]] = [("working tree", None)]
        if args.baseline:
            cores.insert(0, (f"@{args.baseline}", core_at(args.baseline, Path(tmp) / "baseline")))
        for round_ in range(args.rounds):
            for number, (label, core) in enumerate(cores):
                workdir = Path(tmp) / f"round{round_}-core{number}"
                workdir.mkdir()
                with database(args.database) as url:
                    url = url or f"sqlite:///{workdir / 'webhooks.sqlite3'}"
                    for connections, (result, delivered) in measure(url, workdir, core, concurrencies,
                                                                    args.duration).items():
                        results.setdefault((label, connections), []).append((result, delivered))
                        log(f"round {round_ + 1} {label} c={connections}: {result.rps:.0f} req/s, "
                            f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.1f} ms, "
                            f"{result.server_cpu_ms:.2f} ms cpu/req, {delivered:.0f} delivered/s")
    rows = []
    for (label, connections), runs in results.items():
        rows.append([label, connections, f"{median([r.rps for r, _ in runs]):.0f}",
                     f"{median([r.p50_ms for r, _ in runs]):.2f}", f"{median([r.p99_ms for r, _ in runs]):.1f}",
                     f"{median([r.server_cpu_ms for r, _ in runs]):.2f}", f"{median([d for _, d in runs]):.0f}"])
    print(f"# serve: dolibarr-webhooks serve as it ships ({args.database}, plugin log, its delivery threads "
          f"running), {args.duration}s per point, medians of {args.rounds} rounds")
    print()
    print(table(rows, ["core", "conc", "req/s", "p50 ms", "p99 ms", "server cpu ms/req", "delivered/s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
