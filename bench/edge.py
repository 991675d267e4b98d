"""What the web edge costs: the product beside its own pipeline without Flask, side by side.

    python bench/edge.py [--database sqlite|postgresql] [--concurrency 1,16] [--rounds 5]
                         [--duration 4]

Both run under serve's settings, each on its own store: the product
(``dolibarr_webhooks:create_app()``) and ``pipeline_app.py``, which runs the same
authentication, parse and scrub, and ingest (the same store, group commit and fsync) with
none of the edge around them: no Flask request or response, hooks, request id, access line,
answers' counters, limiter or proxy handling. ``wrk`` posts to one, then the other, over
interleaved rounds, a second of warm-up before each point; read the medians of the
per-round ratios. The difference bounds what any leaner edge around this pipeline could
gain, in CPU a request and in the answer's time (issue #15). Since the product answers the
plain webhook POST in WSGI (``web/direct.py``), that is what its edge still adds: the request
id, the access line, the answers' counters, the client's address and the deadline.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

from _common import (GunicornSettings, Wrk, database, interleaved, interleaved_options, interleaved_report,
                     noop_server, product_server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    interleaved_options(parser, concurrency="1,16", rounds=5, duration=4)
    args = parser.parse_args(argv)
    gunicorn = GunicornSettings.serve()
    with tempfile.TemporaryDirectory(prefix="dw-bench-edge-") as tmp, contextlib.ExitStack() as stack:
        product = stack.enter_context(product_server(gunicorn, database_url=stack.enter_context(
            database(args.database))))
        url = stack.enter_context(database(args.database)) or f"sqlite:///{Path(tmp) / 'pipeline.sqlite3'}"
        pipeline = stack.enter_context(noop_server(gunicorn, "pipeline_app:app", extra_env={
            "DOLIBARR_WEBHOOKS_DATABASE_URL": url, "DOLIBARR_WEBHOOKS_PLUGINS": "log"}))
        pipeline.cli("migrate")
        servers = [("product", product), ("pipeline", pipeline)]
        results = interleaved(servers, args.concurrency, args.rounds, args.duration, Wrk(Path(tmp)), warmup=1)
    print(f"# edge: the durable receiver ({args.database}) and its pipeline without Flask, under serve's "
          f"settings ({gunicorn.describe()}), {args.rounds} rounds of {args.duration} s, interleaved; medians")
    print()
    print(interleaved_report(results, [label for label, _ in servers], args.concurrency, "receiver"))
    errors = {f"{label} c={c}": sum(sum(r.errors.values()) for r in runs) for (label, c), runs in results.items()}
    if any(errors.values()):
        print(f"\nerrors (any answer other than 2xx, or a socket error): {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
