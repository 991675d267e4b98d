"""How many gunicorn processes: the durable receiver under two process counts, side by side.

    python bench/processes.py [--database sqlite|postgresql] [--settings 2x16,4x16]
                              [--concurrency 1,16] [--rounds 10] [--duration 3]

Two servers of the same core run at once, each on its own store, under ``serve``'s worker
class: ``PROCESSESxTHREADS`` each (or ``sync:PROCESSES``, our ``SyncWorker``). ``wrk`` posts
to one, then the other, for a few seconds, over many rounds; the figure to read is the median
of the per-round ratios B / A of req/s (with their spread), since the machine's speed moves
more between rounds than between two points taken a few seconds apart. Made for
``web_processes`` (issue #15): the committing thread of a process waits for its GIL behind
the other threads, while holding the writers' turn, so the number of processes per CPU
changes how long the turn is held.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from _common import (GunicornSettings, Wrk, database, interleaved, interleaved_options, interleaved_report,
                     product_server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="2x16,4x16",
                        help="A,B: PROCESSESxTHREADS each (serve's worker class), or sync:PROCESSES")
    interleaved_options(parser, concurrency="16", rounds=10, duration=3)
    args = parser.parse_args(argv)
    specs = args.settings.split(",")
    with tempfile.TemporaryDirectory(prefix="dw-bench-proc-") as tmp, contextlib.ExitStack() as stack:
        servers = []
        for spec in specs:
            url = stack.enter_context(database(args.database))
            gunicorn = GunicornSettings.from_spec(spec)
            servers.append((spec, stack.enter_context(product_server(gunicorn, database_url=url))))
        results = interleaved(servers, args.concurrency, args.rounds, args.duration, Wrk(Path(tmp)))
    print(f"# {args.database}, {args.rounds} rounds of {args.duration} s, interleaved; medians")
    print()
    print(interleaved_report(results, specs, args.concurrency, "processes x threads"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
