"""The answer to Dolibarr must not wait for plugins: acknowledgement latency with and without
a plugin whose handler sleeps 10 s.

    python bench/slow_plugin.py [--database sqlite|postgresql] [--duration 5] [--concurrency 1,16]
                                [--rate 50] [--paced-events 300] [--rounds 2]

A one-module plugin (``benchsleeper``: ``time.sleep(10)`` in ``handle_event``) is
pip-installed into a throw-away virtual environment (``testing.overlay_venv``, so the core
is the one of this checkout) and found through its real entry point. Two services run at
once, each real gunicorn plus ``dolibarr-webhooks worker``:

- without: the base environment, plugins ``log`` only;
- with: the plugin's environment, plugins ``log`` and ``benchsleeper``; before measuring,
  the sleeper's lane is filled (its deliveries are running, the rest queue behind).

Two kinds of load, each on "without", then "with", then "without" again (the two "without"
points show the run-to-run noise the ratio is read against), repeated ``--rounds`` times:

- saturating: wrk posting the real BILL_VALIDATE body as fast as answers come, at each
  concurrency (median of the rounds);
- paced: one post at a time on a new connection, ``--rate`` per second, as Dolibarr's users
  produce them (all rounds pooled).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import wait_for

from _common import (GunicornSettings, Summary, Wrk, WrkResult, database, log, median, paced_posts, percentile,
                     plugin_venv, product_server, table)

SLEEPER_PLUGIN = '''
"""Bench plugin: a handler that takes ``seconds`` (default 10) for every event."""

import time

from dolibarr_webhooks import hookimpl


@hookimpl
def handle_event(event, settings):
    time.sleep(float(settings.get("seconds", 10)))
'''


def wait_for_sleeper(server, busy: int, timeout: float = 30.0) -> dict:
    def running() -> dict | None:
        stats = server.stats()
        return stats if stats["plugins"].get("benchsleeper", {}).get("running", 0) >= busy else None

    return wait_for(running, timeout, interval=0.2, message=lambda: (
        f"the sleeper never got {busy} deliveries running: {server.stats()}\n{server.logs()}"))


def _median_result(results: list[WrkResult]) -> WrkResult:
    """Each figure the median of the rounds (the low median with an even count)."""
    def med(attr: str) -> float:
        values = sorted(getattr(r, attr) for r in results)
        return values[(len(values) - 1) // 2]
    return WrkResult(requests=round(med("rps") * 1000), seconds=1000.0,
                     errors={"total": sum(r.failed for r in results)} if any(r.failed for r in results) else {},
                     p50_ms=med("p50_ms"), p90_ms=med("p90_ms"), p99_ms=med("p99_ms"), max_ms=med("max_ms"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--duration", type=int, default=5, help="seconds measured per point, whole")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--sleep", type=float, default=10.0, help="seconds the plugin sleeps per event")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="paced series: posts per second, one at a time (default 50)")
    parser.add_argument("--paced-events", type=int, default=300, help="paced series: posts per point")
    parser.add_argument("--rounds", type=int, default=2,
                        help="repeat the without/with/without sequence; each figure is the median over rounds")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    gunicorn = GunicornSettings()
    concurrency = 2  # WORKER_CONCURRENCY, the default: the sleeper's lane holds two at a time
    common = dict(SHUTDOWN_GRACE="1s", WORKER_CONCURRENCY=str(concurrency))

    with tempfile.TemporaryDirectory(prefix="dw-bench-slow-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        log("installing the benchsleeper plugin into a virtual environment")
        python = plugin_venv(workdir, "benchsleeper", SLEEPER_PLUGIN)
        without = stack.enter_context(product_server(
            gunicorn, database_url=stack.enter_context(database(args.database)), worker=True,
            PLUGINS="log", **common))
        with_ = stack.enter_context(product_server(
            gunicorn, database_url=stack.enter_context(database(args.database)), worker=True, python=python,
            PLUGINS="log,benchsleeper", BENCHSLEEPER_SECONDS=str(args.sleep), **common))
        plugins = with_.cli("plugins", "--json").stdout
        if '"benchsleeper"' not in plugins:
            raise RuntimeError(f"benchsleeper is not loaded: {plugins}")
        wrk = Wrk(workdir)
        # Fill the sleeper's lane before measuring (a second of unique events, then wait for the claims).
        wrk.run(with_.webhook_url, 1, 1)
        wait_for_sleeper(with_, concurrency)
        log("the sleeper's lane is full; measuring")

        runs: dict[tuple[str, int], list[WrkResult]] = {}
        for round_ in range(args.rounds):
            for connections in concurrencies:
                for name, server in (("without", without), ("with sleeper", with_), ("without (again)", without)):
                    if args.warmup:
                        wrk.run(server.webhook_url, connections, args.warmup)
                    result = wrk.run(server.webhook_url, connections, args.duration, server_pid=server.web_pid)
                    runs.setdefault((name, connections), []).append(result)
                    log(f"round {round_ + 1} c={connections} {name}: {result.rps:.0f} req/s, "
                        f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors or 0}")
        results = {key: _median_result(values) for key, values in runs.items()}

        # Paced: Dolibarr-like traffic, one post at a time well below saturation.
        paced: dict[str, Summary] = {}
        body = sample_body("BILL_VALIDATE")
        id_base = 7_000_000_000
        for round_ in range(args.rounds):
            for name, server in (("without", without), ("with sleeper", with_), ("without (again)", without)):
                id_base += 1_000_000
                latencies = paced_posts(server.port, f"/webhook/{server.secret}", body, args.rate,
                                        args.paced_events, id_base)
                summary = paced.setdefault(name, Summary())
                for value in latencies:
                    summary.add(value)
                log(f"round {round_ + 1} paced {args.rate:g}/s {name}: p50 {median(latencies) * 1000:.1f} ms, "
                    f"p99 {percentile(latencies, 99) * 1000:.1f} ms")
        stats_with = with_.stats()
        stats_without = without.stats()

    rows = []
    for connections in concurrencies:
        base = [results[("without", connections)], results[("without (again)", connections)]]
        for name in ("without", "with sleeper", "without (again)"):
            r = results[(name, connections)]
            rows.append([name, connections, f"{r.rps:.0f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}",
                         f"{r.max_ms:.1f}", r.failed or 0])
        w = results[("with sleeper", connections)]
        mean = lambda attr: sum(getattr(b, attr) for b in base) / 2  # noqa: E731
        spread = lambda attr: abs(getattr(base[0], attr) - getattr(base[1], attr)) / mean(attr)  # noqa: E731
        rows.append(["ratio with/without", connections, f"{w.rps / mean('rps'):.2f}",
                     f"{w.p50_ms / mean('p50_ms'):.2f}", f"{w.p99_ms / mean('p99_ms'):.2f}", "", ""])
        rows.append(["noise without/again", connections, f"{spread('rps'):.0%}", f"{spread('p50_ms'):.0%}",
                     f"{spread('p99_ms'):.0%}", "", ""])
    print(f"# slow plugin: {args.database}, gunicorn {gunicorn.describe()} + worker process, handler sleeps "
          f"{args.sleep:g} s, WORKER_CONCURRENCY {concurrency}, {args.duration}s per point, "
          f"median of {args.rounds} rounds")
    print()
    print(table(rows, ["service", "conc", "req/s", "p50 ms", "p99 ms", "max ms", "errors"]))
    print()
    paced_rows = [[name, *summary.row()] for name, summary in paced.items()]
    w, a, b = (paced[n].values for n in ("with sleeper", "without", "without (again)"))
    base = a + b
    paced_rows.append(["ratio with/without", "", f"{median(w) / median(base):.2f}",
                       f"{percentile(w, 95) / percentile(base, 95):.2f}",
                       f"{percentile(w, 99) / percentile(base, 99):.2f}", ""])
    paced_rows.append(["noise without/again", "", f"{abs(median(a) - median(b)) / median(base):.0%}",
                       f"{abs(percentile(a, 95) - percentile(b, 95)) / percentile(base, 95):.0%}",
                       f"{abs(percentile(a, 99) - percentile(b, 99)) / percentile(base, 99):.0%}", ""])
    print(f"paced: {args.paced_events} posts per point at {args.rate:g}/s, one at a time on a new connection, "
          f"all rounds pooled")
    print()
    print(table(paced_rows, ["service", "n", "median ms", "p95 ms", "p99 ms", "max ms"]))
    sleeper = stats_with["plugins"].get("benchsleeper", {})
    print()
    print(f"with sleeper, at the end: benchsleeper {sleeper.get('running', 0)} running, "
          f"{sleeper.get('pending', 0)} pending, {sleeper.get('delivered', 0)} delivered; "
          f"log {stats_with['plugins'].get('log', {}).get('delivered', 0)} delivered of {stats_with['events']} events")
    print(f"without, at the end: log {stats_without['plugins'].get('log', {}).get('delivered', 0)} delivered "
          f"of {stats_without['events']} events")
    return 0


if __name__ == "__main__":
    sys.exit(main())
