"""Where one gunicorn worker of the durable receiver spends its time under load.

    python bench/profile_ingest.py [--database sqlite|postgresql] [--concurrency 16] [--duration 8]
                                   [--setting NAME=VALUE ...] [--top 30]

Runs the product as ``bench/ingest.py`` does, with every gunicorn worker under cProfile
(``bench/gunicorn_profile.py``), drives it with wrk, stops it, and prints the functions with
the most cumulative wall-clock time, summed over the workers. Profiling slows Python code,
so read shares, not absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pstats
import sys
import tempfile
from pathlib import Path

from _common import BENCH_DIR, GunicornSettings, Wrk, database, log, product_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--sort", default="cumulative", help="pstats sort key (cumulative, tottime)")
    args = parser.parse_args(argv)
    settings = dict(item.split("=", 1) for item in args.setting)

    with tempfile.TemporaryDirectory(prefix="dw-bench-prof-") as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        os.environ["BENCH_PROFILE_DIR"] = tmp
        gunicorn = GunicornSettings(args.workers)
        url = stack.enter_context(database(args.database))
        server = stack.enter_context(product_server(gunicorn, database_url=url, **settings))
        # Restart the web processes under the profiling configuration.
        server.stop("web")
        process = server.start("web", [str(server.bin / "gunicorn"), *gunicorn.args(
            server.port, "dolibarr_webhooks:create_app()", BENCH_DIR / "gunicorn_profile.py")])
        from dolibarr_webhooks.testing import wait_for_port

        wait_for_port(server.port, process=process)
        wrk = Wrk(tmp_path)
        result = wrk.run(server.webhook_url, args.concurrency, args.duration, server_pid=process.pid)
        log(f"{result.rps:.0f} req/s under the profiler, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms")
        server.stop("web")
        dumps = sorted(str(p) for p in tmp_path.glob("worker-*.prof"))
        if not dumps:
            sys.exit("no profile written: " + server.logs())
        out = io.StringIO()
        stats = pstats.Stats(*dumps, stream=out)
        stats.strip_dirs().sort_stats(args.sort).print_stats(args.top)
        print(f"# {len(dumps)} workers, {result.requests} requests answered, "
              f"database {args.database}, settings {settings or 'defaults'}")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
