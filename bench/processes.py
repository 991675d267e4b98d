"""How many gunicorn processes: the durable receiver under two process counts, side by side.

    python bench/processes.py [--database sqlite|postgresql] [--settings 2x16,4x16]
                              [--concurrency 16] [--rounds 10] [--duration 3]

Two servers of the same core run at once, each on its own store, under ``serve``'s worker
class: ``PROCESSESxTHREADS`` each. ``wrk`` posts to one, then the other, for a few seconds,
over many rounds; the figure to read is the median of the per-round ratios B / A of req/s
(with their spread), since the machine's speed moves more between rounds than between two
points taken a few seconds apart. Made for ``web_processes`` (issue #15): the committing
thread of a process waits for its GIL behind the other threads, while holding the writers'
turn, so the number of processes per CPU changes how long the turn is held.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

from _common import GunicornSettings, Wrk, database, log, product_server, table


def settings(spec: str) -> GunicornSettings:
    processes, threads = (int(n) for n in spec.lower().split("x"))
    return dataclasses.replace(GunicornSettings.serve(processes), threads=threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--settings", default="2x16,4x16", help="A,B: PROCESSESxTHREADS each")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=int, default=3)
    args = parser.parse_args(argv)
    specs = args.settings.split(",")
    with tempfile.TemporaryDirectory(prefix="dw-bench-proc-") as tmp, contextlib.ExitStack() as stack:
        servers = []
        for spec in specs:
            url = stack.enter_context(database(args.database))
            servers.append(stack.enter_context(product_server(settings(spec), database_url=url)))
        wrk = Wrk(Path(tmp))
        for server in servers:
            wrk.run(server.webhook_url, args.concurrency, 1)  # warm-up
        results: list[list] = [[] for _ in specs]
        for round_ in range(1, args.rounds + 1):
            for spec, server, found in zip(specs, servers, results):
                result = wrk.run(server.webhook_url, args.concurrency, args.duration, server_pid=server.web_pid)
                found.append(result)
                log(f"round {round_} {spec}: {result.rps:.0f} req/s, {result.server_cpu_ms:.2f} ms cpu/req, "
                    f"p50 {result.p50_ms:.1f} ms")
    ratios = [b.rps / a.rps for a, b in zip(*results)]
    rows = [[spec, f"{statistics.median(r.rps for r in found):.0f}",
             f"{statistics.median(r.server_cpu_ms for r in found):.2f}",
             f"{statistics.median(r.p50_ms for r in found):.1f}", f"{statistics.median(r.p99_ms for r in found):.1f}"]
            for spec, found in zip(specs, results)]
    print(f"# {args.database}, c={args.concurrency}, {args.rounds} rounds of {args.duration} s, interleaved; medians")
    print()
    print(table(rows, ["processes x threads", "req/s", "cpu ms/req", "p50 ms", "p99 ms"]))
    print()
    print(f"{specs[1]} / {specs[0]}: req/s x{statistics.median(ratios):.2f} (median of the per-round ratios; "
          f"min {min(ratios):.2f}, max {max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
