"""Ingest throughput and acknowledgement latency of the durable receiver, side by side
with a no-op Flask endpoint under the same gunicorn settings and the Node receiver that
stores nothing.

    python bench/ingest.py [--database sqlite|postgresql|both] [--concurrency 1,16,64]
                           [--duration 4] [--rounds 3] [--production] [--with-worker]
                           [--baseline GIT_REVISION] [--floor] [--network-delay MS] [--no-flush]

All targets run at once (loopback): under real gunicorn, ``bench/noop_app.py``, the least
durable Flask receiver of ``bench/floor_app.py`` and ``dolibarr_webhooks:create_app()`` on
SQLite (and/or a throw-away PostgreSQL database); ``node-express``, the Node/Express receiver
of the widely copied guide (``bench/node_receiver``: one Node process, stdout to /dev/null;
skipped, saying why, where node or npm is missing).
At each concurrency the points are taken one after the other, warm-up first, with ``wrk``
posting the real BILL_VALIDATE body (about 15 KB, a unique object id per request so none is
a duplicate); the whole sequence is repeated ``--rounds`` times. Before each point, what the
points before it wrote is written out (``CHECKPOINT`` on PostgreSQL, then ``sync``), so that
no point's tail pays for another's writes (``--no-flush``: not). Prints requests/s, p50 and
p99 of the answers, the ratios durable / no-op and durable / node-express, the share of the
machine taken by the load generator, the server and everything else, and the server's CPU
time per request; then checks that every acknowledged event is in the store and, on SQLite
at c=1, prints what an fsync costs on the disk under the stores back to back and after the
quiet an answer leaves it (``cold_fsync.py``). ``--floor`` adds the floors of
``bench/floor_app.py``: append each body to a file and fdatasync it; parse and scrub it
with the product's own code and store nothing; both: they bound any design of the
receiver; and for each store, the least durable receiver with a group commit of its own
(``floor-sqlite-grouped``, ``floor-postgres-grouped``), what the durable receiver's batching
is up against.
``--with-worker`` runs each durable target's delivery worker process too; during a point the
other targets' workers are stopped, so that none drains its backlog on the measured target's
time. ``--network-delay``: every PostgreSQL target, the floor
included, reaches the server through ``delay_proxy.py``, which holds every chunk that many
milliseconds each way, as a database on another host would (the proxy's own CPU is the
machine's too).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from _common import (NCPU, PRODUCTION_CONFIG, GunicornSettings, Wrk, WrkResult, core_at, database, flush_writes,
                     interpreter, least_durable_server, log, node_express_version, node_server, node_unavailable,
                     noop_server, product_server, sqlite_counters, table)
from cold_fsync import measure as sync_after_pauses
from delay_proxy import delayed

# Issue #15's targets: at concurrency 16, at least 0.8 of the least durable Flask receiver
# of the same store (floor-sqlite-insert, floor-postgres-insert) and p99 under 25 ms; at
# concurrency 1, p50 at most 1 ms.
TARGET_RATIO = 0.8
TARGET_P99_MS = 25.0
TARGET_CONCURRENCY = 16
TARGET_P50_C1_MS = 1.0
LEAST_DURABLE = {"sqlite": "floor-sqlite-insert", "postgresql": "floor-postgres-insert"}
# Issue #15's goal 5: durable, and as fast as the Node server that stores nothing.
NODE = "node-express"

# What each floor of bench/floor_app.py stands for.
FLOORS = {
    "floor-append": "keeps what it acknowledges",
    "floor-append-grouped": "keeps what it acknowledges, committing in groups",
    "floor-scrub": "scrubs what it stores, even if storing cost nothing",
    "floor-scrub-append": "scrubs, then keeps what it acknowledges",
    "floor-sqlite-insert": "json.loads, then INSERTs the raw body into SQLite (the least durable Flask receiver)",
    "floor-postgres-insert": "json.loads, then INSERTs the raw body into PostgreSQL",
    "floor-sqlite-grouped": "json.loads, then INSERTs the raw body into SQLite, committing in groups",
    "floor-postgres-grouped": "json.loads, then INSERTs the raw body into PostgreSQL, committing in groups",
}
# The least durable receiver of each store with a group commit of its own (--floor): what ours
# is up against once both batch their commits.
GROUPED = {"sqlite": "floor-sqlite-grouped", "postgresql": "floor-postgres-grouped"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--duration", type=int, default=4, help="seconds measured per point, whole (default 4)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each point, whole; 0: none")
    parser.add_argument("--concurrency", default="1,16,64", help="connections, comma-separated")
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeat every point this many times, interleaved; figures are medians (default 3)")
    parser.add_argument("--production", action="store_true",
                        help="every target under contrib/gunicorn.conf.py, the production settings (two "
                             "processes of 16 threads per CPU, 2 to 8; multi-process metrics; gunicorn's access log "
                             "only at a log level where the application writes none)")
    parser.add_argument("--serve", action="store_true",
                        help="every target under what 'dolibarr-webhooks serve' runs since it resists slow "
                             "clients: dolibarr_webhooks.web.gunicorn.ThreadWorker processes (2 per CPU, 2 to 8), "
                             "16 threads each")
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn workers (default: 2; with --serve, serve's; with --production, the file's)")
    parser.add_argument("--worker-class", default=None, help="gunicorn worker class (default sync)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker with --worker-class gthread")
    parser.add_argument("--with-worker", action="store_true",
                        help="also run the delivery worker process, as in production (the other targets' "
                             "workers are stopped during a point)")
    parser.add_argument("--worker-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="setting of the delivery worker process only (with --with-worker)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="product setting without the DOLIBARR_WEBHOOKS_ prefix, e.g. SQLITE_SYNCHRONOUS=normal")
    parser.add_argument("--no-flush", action="store_true",
                        help="start each point without first writing out what the points before it left "
                             "(the kernel's dirty pages, PostgreSQL's buffers)")
    parser.add_argument("--baseline", metavar="GIT_REVISION",
                        help="also run each durable target with the core package of this revision (git archive)")
    parser.add_argument("--new-connections", action="store_true",
                        help="each request on a new connection, as Dolibarr posts (one curl connection per "
                             "event), instead of wrk's kept-alive connections")
    parser.add_argument("--floor", action="store_true",
                        help="also run the floors of bench/floor_app.py: append and fdatasync the body; parse and "
                             "scrub it, storing nothing; both")
    parser.add_argument("--network-delay", type=float, default=0.0,
                        help="PostgreSQL targets: milliseconds each way between them and the server")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.production:
        gunicorn = GunicornSettings(args.workers, args.worker_class, args.threads, PRODUCTION_CONFIG)
    elif args.serve:
        gunicorn = GunicornSettings.serve(args.workers)
    else:
        gunicorn = GunicornSettings(args.workers or 2, args.worker_class or "sync", args.threads)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    settings = dict(item.split("=", 1) for item in args.setting)
    worker_settings = dict(item.split("=", 1) for item in args.worker_setting)
    node_skipped = node_unavailable()
    if node_skipped:
        log(f"{NODE} skipped: {node_skipped}")
    print(f"# ingest: {NCPU} CPUs, gunicorn {gunicorn.describe()} for every Python target, "
          + (f"{NODE} skipped ({node_skipped.splitlines()[0]})" if node_skipped
             else f"{NODE}: 1 Node process (express {node_express_version()})")
          + ", wrk 1 thread" + (", a new connection per request" if args.new_connections else "") + ", "
          f"{args.duration:g}s per point after {args.warmup:g}s warm-up"
          + (f", settings {settings}" if settings else "")
          + (f", delivery worker running{f' with {worker_settings}' if worker_settings else ''}"
             if args.with_worker else "")
          + (f", @{args.baseline} = the core package at that revision" if args.baseline else "")
          + (f", PostgreSQL {args.network_delay:g} ms away each way" if args.network_delay else ""), flush=True)
    print(f"# {interpreter()}", flush=True)

    with tempfile.TemporaryDirectory(prefix="dw-bench-wrk-") as tmp, contextlib.ExitStack() as stack:
        wrk = Wrk(Path(tmp), new_connections=args.new_connections)
        targets = {"no-op": stack.enter_context(noop_server(gunicorn))}
        if not node_skipped:
            targets[NODE] = stack.enter_context(node_server())
        if args.floor:
            for route in ("append", "append-grouped", "scrub", "scrub-append"):
                targets[f"floor-{route}"] = stack.enter_context(noop_server(gunicorn, "floor_app:app", route))
        # The least durable receiver of each store measured: what issue #15's ratio is against.
        for kind in kinds:
            targets[LEAST_DURABLE[kind]] = stack.enter_context(least_durable_server(gunicorn, kind, args.network_delay))
            if args.floor:
                targets[GROUPED[kind]] = stack.enter_context(
                    least_durable_server(gunicorn, kind, args.network_delay, grouped=True))
        cores = [("", None)]
        if args.baseline:
            cores.insert(0, (f"@{args.baseline}", core_at(args.baseline, Path(tmp) / "baseline")))
        for kind in kinds:
            for label, core in cores:
                url = stack.enter_context(delayed(stack.enter_context(database(kind)), args.network_delay))
                targets[f"durable-{kind}{label}"] = stack.enter_context(
                    product_server(gunicorn, database_url=url, worker=args.with_worker,
                                   worker_settings=worker_settings, core=core, **settings))
        log(f"servers up: {', '.join(targets)}; body {wrk.body_size} bytes")

        results: dict[tuple[str, int], list[WrkResult]] = {}
        sent: dict[str, int] = {name: 0 for name in targets}
        # SQLite's group commit: its transactions and fsyncs during each point (SharedSync's counters).
        shared: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
        counters = {name: sqlite_counters(server) for name, server in targets.items() if name.startswith("durable")}
        flushed: list[float] = []
        for round_ in range(args.rounds):
            for connections in concurrencies:
                for name, server in targets.items():
                    if not args.no_flush:
                        flushed.append(flush_writes("postgresql" in kinds))
                    with _workers_paused(target for other, target in targets.items() if other != name):
                        if args.warmup:
                            sent[name] += wrk.run(server.webhook_url, connections, args.warmup).requests
                        before = counters[name]() if counters.get(name) else None
                        result = wrk.run(server.webhook_url, connections, args.duration, server_pid=server.web_pid)
                    sent[name] += result.requests
                    results.setdefault((name, connections), []).append(result)
                    if before is not None:
                        after = counters[name]()
                        shared.setdefault((name, connections), []).append(
                            (result.requests, after["commits"] - before["commits"], after["fsyncs"] - before["fsyncs"]))
                    log(f"round {round_ + 1} c={connections} {name}: {result.rps:.0f} req/s, "
                        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors or 0}")

        # Every acknowledged event must be in the store (a few more may be stored: wrk stops
        # with requests in flight whose answers it does not count).
        integrity = []
        for name, server in targets.items():
            if name.startswith("durable"):
                stored = server.stats()["events"]
                integrity.append(f"{name}: {stored} events stored for {sent[name]} acknowledged "
                                 f"({'ok' if stored >= sent[name] else 'MISSING EVENTS'})")
        disk = _disk_line(Path(tmp)) if "sqlite" in kinds and 1 in concurrencies else []

    flush = ([f"before each point, what the points before it wrote was written out: {statistics.median(flushed):.2f} s "
              f"at the median, {max(flushed):.2f} s at most (--no-flush: not)"] if flushed else [])
    print_report(results, targets, concurrencies, integrity + _group_commit_lines(shared) + disk + flush)
    return 0


def _disk_line(folder: Path) -> list[str]:
    """What an fsync costs on the disk under the SQLite stores, back to back and after the
    quiet an answer at c=1 leaves it (its request's work, with no I/O, comes before its
    sync): the part of the c=1 answer that is the disk's (``cold_fsync.py`` shows more)."""
    rows = sync_after_pauses(str(folder / "disk.sqlite3"), [(0.0, 100), (0.001, 100)])
    (_, _, _, _, back_to_back), (_, _, quiet, _, after_quiet) = rows
    return [f"the disk under the SQLite stores: fdatasync {back_to_back} ms back to back, {after_quiet} ms "
            f"after {quiet} ms without I/O (medians of 100; bench/cold_fsync.py)"]


@contextlib.contextmanager
def _workers_paused(servers):
    """With ``--with-worker``, the delivery workers of the targets not being measured are
    stopped (SIGSTOP) meanwhile: else a target's worker drains its backlog during the next
    target's point, and takes the CPU from it. Each store is its own file or database, so a
    stopped worker holds nothing the measured target needs."""
    stopped = [process for server in servers if (process := server.processes.get("worker")) is not None
               and process.poll() is None]
    for process in stopped:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for process in stopped:
            os.kill(process.pid, signal.SIGCONT)


def _group_commit_lines(shared) -> list[str]:
    """How many answers each SQLite transaction and each fsync covered, over all the rounds of
    a point (the answers wrk counted: a few in flight at its end are left out)."""
    lines = []
    for (name, connections), points in shared.items():
        answered, commits, fsyncs = (sum(point[i] for point in points) for i in range(3))
        if commits and fsyncs:
            lines.append(f"{name} at c={connections}: {answered / commits:.2f} requests per transaction, "
                         f"{answered / fsyncs:.2f} per fsync ({commits / fsyncs:.2f} transactions per fsync)")
    return lines


def _median(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _round_ratios(runs: list[WrkResult], others: list[WrkResult]) -> list[float]:
    """req/s of ``runs`` over ``others``, round by round: points taken one after the other in
    the same round share the machine's noise."""
    return [r.rps / o.rps for r, o in zip(runs, others) if o.rps]


def _versus(results, runs: list[WrkResult], other: str | None, connections: int) -> float | None:
    """The median of the round-by-round req/s ratios of ``runs`` to target ``other`` at
    ``connections``; None when ``other`` was not measured."""
    if (other, connections) not in results:
        return None
    return _median(_round_ratios(runs, results[(other, connections)]))


def print_report(results, targets, concurrencies, integrity) -> None:
    """Each figure is the median over the rounds; the ratio is the median of the ratios of
    points taken one after the other in the same round (they share the machine's noise)."""
    rows = []
    verdicts = []
    rounds = len(results[("no-op", concurrencies[0])])
    for connections in concurrencies:
        baseline = results[("no-op", connections)]
        for name in targets:
            runs = results[(name, connections)]
            med = lambda attr: _median([getattr(r, attr) for r in runs])  # noqa: E731
            ratios = _round_ratios(runs, baseline)
            ratio = _median(ratios)
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
            other = _median([max(0.0, r.machine_cpu - r.loadgen_cpu - r.server_cpu) for r in runs])
            p99 = med("p99_ms")
            rows.append([name, connections, f"{med('rps'):.0f}", f"{med('p50_ms'):.1f}", f"{p99:.1f}",
                         "-" if name == "no-op" else f"{ratio:.2f}{spread}",
                         f"{med('loadgen_cpu'):.0%}", f"{med('server_cpu'):.0%}", f"{other:.0%}",
                         f"{med('server_cpu_ms'):.2f}", sum(r.failed for r in runs)])
            if name.startswith("floor") and connections == TARGET_CONCURRENCY:
                verdicts.append(f"{name}: req/s ratio {ratio:.2f}, p99 {p99:.1f} ms: the bound of any receiver "
                                f"that {FLOORS[name]}, on this machine")
            if name in GROUPED.values() and connections == TARGET_CONCURRENCY:
                insert = next(LEAST_DURABLE[kind] for kind, grouped in GROUPED.items() if grouped == name)
                verdicts.append(f"{name}: {_versus(results, runs, insert, connections):.2f}x {insert}: what "
                                "batching the commits gives the least durable receiver")
            kind = name.split("-")[1].split("@")[0].split("+")[0] if name.startswith("durable") else ""
            floor, grouped = LEAST_DURABLE.get(kind), GROUPED.get(kind)
            at_target = name.startswith("durable") and connections == TARGET_CONCURRENCY
            if at_target and (vs_floor := _versus(results, runs, floor, connections)) is not None:
                ok_ratio, ok_p99 = vs_floor >= TARGET_RATIO, p99 < TARGET_P99_MS
                verdicts.append(f"{name}: {vs_floor:.2f}x {floor} (target >= {TARGET_RATIO}): "
                                f"{'met' if ok_ratio else 'NOT met'}; p99 {p99:.1f} ms "
                                f"(target < {TARGET_P99_MS:g} ms): {'met' if ok_p99 else 'NOT met'}")
            if at_target and (vs_grouped := _versus(results, runs, grouped, connections)) is not None:
                verdicts.append(f"{name}: {vs_grouped:.2f}x {grouped} (the least durable receiver, batching its "
                                "commits as ours does)")
            if at_target and (vs_node := _versus(results, runs, NODE, connections)) is not None:
                verdicts.append(f"{name}: {vs_node:.2f}x {NODE} (goal >= 1.00: durable, and as fast as the "
                                "server that stores nothing)")
            if name.startswith("durable") and connections == 1:
                p50 = med("p50_ms")
                # The least durable receiver's own answer time beside it: the part of the
                # target that is the machine's (its fsync, its round trip to the database).
                beside = ""
                if (floor, connections) in results:
                    floor_p50 = _median([r.p50_ms for r in results[(floor, connections)]])
                    beside = f"; {floor} answers in {floor_p50:.2f} ms"
                verdicts.append(f"{name}: p50 at c=1 {p50:.2f} ms (target <= {TARGET_P50_C1_MS:g} ms): "
                                f"{'met' if p50 <= TARGET_P50_C1_MS else 'NOT met'}{beside}")
    print()
    print(table(rows, ["target", "conc", "req/s", "p50 ms", "p99 ms",
                       "durable/no-op" + (" (min-max)" if rounds > 1 else ""),
                       "wrk cpu", "server cpu", "other cpu", "cpu ms/req", "errors"]))
    print(f"\n(median of {rounds} interleaved round{'s' if rounds > 1 else ''}; cpu: share of the whole machine "
          "during the point, 'other' being\n everything else running, the database server included; "
          "cpu ms/req: server CPU time per answered request)")
    print()
    for line in verdicts + _baseline_lines(results, targets, concurrencies) + integrity:
        print(line)


def _baseline_lines(results, targets, concurrencies) -> list[str]:
    """Shipped against the baseline revision, as the median of the per-round ratios."""
    lines = []
    pairs_of_targets = []
    for name in targets:
        if "@" in name:
            pairs_of_targets.append((name.split("@")[0], name))
    for name, shipped in pairs_of_targets:
        for connections in concurrencies:
            pairs = list(zip(results[(name, connections)], results[(shipped, connections)]))
            rps = _median(_round_ratios(results[(name, connections)], results[(shipped, connections)]))
            p99 = _median([p.p99_ms / s.p99_ms for p, s in pairs if s.p99_ms])
            lines.append(f"{name} / {shipped} at c={connections}: req/s x{rps:.2f}, p99 x{p99:.2f}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
