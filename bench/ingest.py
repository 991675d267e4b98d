"""Ingest throughput and acknowledgement latency of the durable receiver, side by side
with a no-op Flask endpoint under the same gunicorn settings.

    python bench/ingest.py [--database sqlite|postgresql|both] [--duration 8] [--concurrency 1,16,64]

Both targets run at once (real gunicorn, loopback); at each concurrency the points are
taken one after the other, warm-up first, with ``wrk`` posting the real BILL_VALIDATE
body (about 15 KB, a unique object id per request so none is a duplicate). Prints
requests/s, p50 and p99 of the answers, the ratio durable / no-op, and the share of the
machine taken by the load generator, the server and everything else.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from _common import (NCPU, GunicornSettings, Wrk, WrkResult, database, log, noop_server, product_server,
                     table)

# The targets, at concurrency 16.
TARGET_RATIO = 0.85
TARGET_P99_MS = 25.0
TARGET_CONCURRENCY = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--duration", type=int, default=8, help="seconds measured per point, whole (default 8)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each point, whole; 0: none")
    parser.add_argument("--concurrency", default="1,16,64", help="connections, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every point this many times, interleaved")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as serve)")
    parser.add_argument("--worker-class", default="sync", help="gunicorn worker class (default sync)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker with --worker-class gthread")
    parser.add_argument("--with-worker", action="store_true",
                        help="also run the delivery worker process, as in production")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="product setting without the DOLIBARR_WEBHOOKS_ prefix, e.g. SQLITE_SYNCHRONOUS=normal")
    parser.add_argument("--patch", action="append", default=[], metavar="NAME",
                        help="bench-only experiment of bench/core_patches.py on the durable targets "
                             "(to_json, prepare, flock); repeatable")
    parser.add_argument("--compare-patched", action="store_true",
                        help="run each durable target twice in the same run: as shipped and with --patch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gunicorn = GunicornSettings(args.workers, args.worker_class, args.threads)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    settings = dict(item.split("=", 1) for item in args.setting)
    print(f"# ingest: {NCPU} CPUs, gunicorn {gunicorn.describe()} for every target, wrk 1 thread, "
          f"{args.duration:g}s per point after {args.warmup:g}s warm-up"
          + (f", settings {settings}" if settings else "")
          + (f", +patched = bench/core_patches.py {','.join(args.patch)}" if args.patch else ""), flush=True)

    with tempfile.TemporaryDirectory(prefix="dw-bench-wrk-") as tmp, contextlib.ExitStack() as stack:
        wrk = Wrk(Path(tmp))
        targets = {"no-op": stack.enter_context(noop_server(gunicorn))}
        variants = [("", [])]
        if args.patch:
            variants = [("", []), ("+patched", args.patch)] if args.compare_patched else [("+patched", args.patch)]
        for kind in kinds:
            for suffix, patches in variants:
                url = stack.enter_context(database(kind))
                targets[f"durable-{kind}{suffix}"] = stack.enter_context(
                    product_server(gunicorn, database_url=url, worker=args.with_worker, patches=patches,
                                   **settings))
        log(f"servers up: {', '.join(targets)}; body {wrk.body_size} bytes")

        results: dict[tuple[str, int], list[WrkResult]] = {}
        sent: dict[str, int] = {name: 0 for name in targets}
        for round_ in range(args.rounds):
            for connections in concurrencies:
                for name, server in targets.items():
                    if args.warmup:
                        sent[name] += wrk.run(server.webhook_url, connections, args.warmup).requests
                    result = wrk.run(server.webhook_url, connections, args.duration, server_pid=server.web_pid)
                    sent[name] += result.requests
                    results.setdefault((name, connections), []).append(result)
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

    print_report(results, targets, concurrencies, integrity)
    return 0


def _best(results: list[WrkResult]) -> WrkResult:
    """With several rounds, the round of median throughput."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def print_report(results, targets, concurrencies, integrity) -> None:
    rows = []
    verdicts = []
    for connections in concurrencies:
        baseline = _best(results[("no-op", connections)])
        for name in targets:
            r = _best(results[(name, connections)])
            ratio = r.rps / baseline.rps if baseline.rps else float("nan")
            other = max(0.0, r.machine_cpu - r.loadgen_cpu - r.server_cpu)
            rows.append([name, connections, f"{r.rps:.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
                         "-" if name == "no-op" else f"{ratio:.2f}",
                         f"{r.loadgen_cpu:.0%}", f"{r.server_cpu:.0%}", f"{other:.0%}",
                         r.failed or 0])
            if name != "no-op" and connections == TARGET_CONCURRENCY:
                ok_ratio, ok_p99 = ratio >= TARGET_RATIO, r.p99_ms < TARGET_P99_MS
                verdicts.append(f"{name}: req/s ratio {ratio:.2f} (target >= {TARGET_RATIO}): "
                                f"{'met' if ok_ratio else 'NOT met'}; p99 {r.p99_ms:.1f} ms "
                                f"(target < {TARGET_P99_MS:g} ms): {'met' if ok_p99 else 'NOT met'}")
    print()
    print(table(rows, ["target", "conc", "req/s", "p50 ms", "p99 ms", "durable/no-op",
                       "wrk cpu", "server cpu", "other cpu", "errors"]))
    print("\n(cpu: share of the whole machine during the point; 'other' is everything else running,\n"
          " the database server included)")
    print()
    for line in verdicts + integrity:
        print(line)


if __name__ == "__main__":
    sys.exit(main())
