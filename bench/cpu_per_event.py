"""CPU time the receiver spends per event, in one process, without HTTP server or load generator.

    python bench/cpu_per_event.py [--events 1000] [--database sqlite|postgresql|both]

Throughput on a shared 2-core machine swings with whatever else runs; the CPU time a process
spends per request swings much less. Each variant runs in its own fresh interpreter: the
no-op app of ``bench/noop_app.py`` and the product through Flask's test client (the same
view, auth, parsing, store and logging code as under gunicorn, minus the HTTP parsing both
share), as shipped. Prints CPU and wall
milliseconds per request, and the ratio no-op / durable, which is the best req/s ratio
``bench/ingest.py`` could show on a CPU-bound machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (BENCH_DIR, WEBHOOKS_TEST_SECRET, core_at, database, in_process_product, log, path_first, table,
                     unique_body)

VARIANTS = {  # name -> whether it is the product (None: the no-op app)
    "no-op": None,
    "shipped": "",
}


def child(kind: str, product: str | None, url: str, events: int, warmup: int, sync: str) -> dict:
    """Runs in the child interpreter: measure one variant."""
    from dolibarr_webhooks.samples import sample_body

    body = sample_body("BILL_VALIDATE")
    bodies = [unique_body(body, 10_000_000 + i) for i in range(warmup + events)]
    if product is None:
        sys.path.insert(0, str(BENCH_DIR))
        from noop_app import app
        client, path = app.test_client(), f"/webhook/{WEBHOOKS_TEST_SECRET}"
    else:
        _, client, path = in_process_product(url, SQLITE_SYNCHRONOUS=sync)
    for raw in bodies[:warmup]:
        client.post(path, data=raw)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for raw in bodies[warmup:]:
        response = client.post(path, data=raw)
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.data[:300]!r}")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_ms": cpu / events * 1000, "wall_ms": wall / events * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--baseline", metavar="GIT_REVISION",
                        help="also measure the core package of this revision (git archive), as shipped")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(**spec, events=args.events, warmup=args.warmup)))
        return 0

    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    stores = []
    for kind in kinds:
        stores += [("sqlite FULL", kind, "full"), ("sqlite NORMAL", kind, "normal")] if kind == "sqlite" \
            else [("postgresql", kind, "full")]
    rows = []
    variants = list(VARIANTS.items())
    with tempfile.TemporaryDirectory(prefix="dw-bench-cpu-") as tmp:
        env = dict(os.environ)
        baseline_env = None
        if args.baseline:
            core = core_at(args.baseline, Path(tmp) / "baseline")
            baseline_env = path_first(env, core)
            variants.insert(1, (f"@{args.baseline}", ""))
        noop = None
        for label, kind, sync in stores:
            for variant, product in variants:
                if product is None and noop is not None:
                    continue
                with contextlib.ExitStack() as stack:
                    url = stack.enter_context(database(kind)) or f"sqlite:///{Path(tmp) / f'{label}-{variant}.sqlite3'}"
                    spec = json.dumps({"kind": kind, "product": product, "url": url, "sync": sync})
                    done = subprocess.run([sys.executable, __file__, "--child", spec, "--events", str(args.events),
                                           "--warmup", str(args.warmup)], capture_output=True, text=True,
                                          timeout=600, cwd=tmp,
                                          env=baseline_env if variant.startswith("@") else env)
                    if done.returncode:
                        raise RuntimeError(done.stderr[-3000:])
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                log(f"{label} {variant}: {result['cpu_ms']:.3f} ms CPU, {result['wall_ms']:.3f} ms wall per request")
                if product is None:
                    noop = result
                    rows.append(["-", variant, f"{result['cpu_ms']:.3f}", f"{result['wall_ms']:.3f}", "-"])
                else:
                    rows.append([label, variant, f"{result['cpu_ms']:.3f}", f"{result['wall_ms']:.3f}",
                                 f"{noop['cpu_ms'] / result['cpu_ms']:.2f}"])
    print(f"# cpu per event: {args.events} BILL_VALIDATE requests (unique bodies) through Flask's test client, "
          f"one process, after {args.warmup} warm-up; plugin log (1 delivery per event)")
    print()
    print(table(rows, ["store", "variant", "cpu ms/req", "wall ms/req", "no-op cpu / durable cpu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
