"""The answer to the events of a quiet shop: one event at a time, a pause between them, each on
a new connection, as Dolibarr posts; what a Dolibarr user waits for on most days.

    python bench/quiet.py [--database postgresql|sqlite] [--network-delay MS] [--baseline REV]
                          [--noop] [--floor] [--events 20] [--pause 1.1]
                          [--settings 1x16,4x16,sync:4]

``ingest.py`` posts back to back, so every connection of the service is busy and nothing the
service does after a quiet second shows there. Here ``dolibarr-webhooks`` runs under serve's
settings (its processes and threads, the worker left out), and the client posts the real
``BILL_VALIDATE`` sample, each with its own object id, each after a pause of ``--pause``
seconds, timing each answer from the connection's opening to the answer's last byte. With
``--baseline`` the core of that revision runs too, on its own store, and the posts take
turns between the two; with ``--noop`` ``noop_app.py`` does too, under the same settings,
and with ``--floor`` the least durable receiver of the store (``floor_app.py``, as
``ingest.py`` runs it).
Then, on each, 200 posts back to back, still each on a new connection: what the quiet
seconds cost. ``--network-delay``: PostgreSQL is reached through ``delay_proxy.py``, which holds every
chunk that many milliseconds each way, as a database on another host would. ``--settings``:
each target runs under each of these gunicorn settings instead of serve's, side by side
(``PROCESSESxTHREADS`` under serve's worker class, ``sync:PROCESSES`` under ``SyncWorker``):
what the number of processes, and the hand-over from the accepting thread, cost a post on a
new connection.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from _common import (GunicornSettings, core_at, database, least_durable_server, log, noop_server, product_server, table,
                     unique_body)
from delay_proxy import delayed

from dolibarr_webhooks.samples import sample_body


BACK_TO_BACK = 200


def post(url: str, body: bytes) -> float:
    """One POST on a new connection; milliseconds to the answer's last byte."""
    parts = urlsplit(url)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
    finally:
        conn.close()
    return (time.perf_counter() - started) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--network-delay", type=float, default=0.0,
                        help="PostgreSQL: milliseconds each way between the service and the server")
    parser.add_argument("--baseline", metavar="GIT_REVISION")
    parser.add_argument("--noop", action="store_true", help="also bench/noop_app.py, under the same settings")
    parser.add_argument("--floor", action="store_true",
                        help="also the store's least durable receiver (bench/floor_app.py), under the same settings")
    parser.add_argument("--events", type=int, default=20, help="posts to each service")
    parser.add_argument("--pause", type=float, default=1.1, help="seconds before each post")
    parser.add_argument("--settings", metavar="SPEC,SPEC",
                        help="gunicorn settings to run side by side instead of serve's: PROCESSESxTHREADS under "
                             "serve's worker class, or sync:PROCESSES")
    args = parser.parse_args(argv)
    specs = args.settings.split(",") if args.settings else [None]
    body = sample_body("BILL_VALIDATE")
    back_to_back: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-quiet-") as tmp, contextlib.ExitStack() as stack:
        cores = {"working tree": None}
        if args.baseline:
            cores = {f"@{args.baseline}": core_at(args.baseline, Path(tmp) / "baseline"), **cores}
        servers = {}
        for spec in specs:
            gunicorn = GunicornSettings.from_spec(spec) if spec else GunicornSettings.serve()
            suffix = f" {spec}" if spec else ""
            if args.noop:
                servers["no-op" + suffix] = stack.enter_context(noop_server(gunicorn))
            if args.floor:
                servers["floor-insert" + suffix] = stack.enter_context(
                    least_durable_server(gunicorn, args.database, args.network_delay))
            for label, core in cores.items():
                url = stack.enter_context(delayed(stack.enter_context(database(args.database)), args.network_delay))
                servers[label + suffix] = stack.enter_context(product_server(gunicorn, database_url=url, core=core))
        times: dict[str, list[float]] = {label: [] for label in servers}
        log(f"servers up: {', '.join(servers)}; {args.events} posts each, {args.pause} s apart")
        number = 40_000_000
        for label, server in servers.items():  # a first answer opens connections: not counted
            post(server.webhook_url, unique_body(body, number := number + 1))
        labels = list(servers)
        for round_ in range(args.events):
            # Each post after its own pause: the machine as idle before each (the post just
            # after another finds its CPUs awake, 1 ms faster here), in turns.
            for label in labels[round_ % len(labels):] + labels[:round_ % len(labels)]:
                time.sleep(args.pause)
                times[label].append(post(servers[label].webhook_url, unique_body(body, number := number + 1)))
        for label, server in servers.items():
            back_to_back[label] = [post(server.webhook_url, unique_body(body, number := number + 1))
                                   for _ in range(BACK_TO_BACK)]
    delay = f", PostgreSQL {args.network_delay} ms away each way" if args.network_delay else ""
    under = f"settings {args.settings}" if args.settings else f"gunicorn {GunicornSettings.serve().describe()}"
    print(f"# quiet: {args.database}{delay}, {under}, one post at a time, "
          f"{args.pause} s apart, each on a new connection")
    print()
    rows = [[label, len(values), f"{statistics.median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}",
             f"{statistics.median(back_to_back[label]):.2f}"] for label, values in times.items()]
    print(table(rows, ["target", "posts", "p50 ms", "min ms", "max ms", "back to back p50 ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
