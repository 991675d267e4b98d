"""Instructions the receiver executes per request, counted by valgrind: a figure that does not
move with whatever else the machine is doing.

    python bench/instructions.py [--baseline GIT_REVISION] [--database sqlite|postgresql]
                                 [--events 40,160]

On a shared machine, CPU time per request moves by a tenth from one run to the next, more than
most single changes to the request path save. ``valgrind --tool=callgrind`` counts the
instructions of the process instead (every thread, user space only: the kernel's side of a
system call is not counted), the same for the same code and inputs. Each variant runs
``cpu_per_event.py``'s child (Flask's test client, the product as shipped, the access log on)
twice, with two numbers of requests after the same warm-up; the difference, divided by the
difference of requests, is what one request costs, without the interpreter's start-up. About
a minute per variant (``apt-get install -y valgrind``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BENCH_DIR, core_at, database, log, path_first, table

_TOTAL = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def instructions(spec: dict, events: int, warmup: int, workdir: Path, env: dict[str, str]) -> int:
    """Instructions of one child run (start-up, warm-up and ``events`` requests)."""
    out = workdir / f"callgrind.{events}.out"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
               str(BENCH_DIR / "cpu_per_event.py"), "--child", json.dumps(spec), "--events", str(events),
               "--warmup", str(warmup)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=workdir, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return int(_TOTAL.search(out.read_bytes()).group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--events", default="40,160", help="the two numbers of requests, comma-separated")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--baseline", metavar="GIT_REVISION",
                        help="also count the core package of this revision (git archive)")
    args = parser.parse_args(argv)
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed: apt-get install -y valgrind")
    few, many = (int(n) for n in args.events.split(","))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dw-bench-instr-") as tmp:
        env = dict(os.environ)
        variants: list[tuple[str, str | None, dict[str, str]]] = [("no-op", None, env), ("shipped", "", env)]
        if args.baseline:
            core = core_at(args.baseline, Path(tmp) / "baseline")
            variants.insert(1, (f"@{args.baseline}", "", path_first(env, core)))
        per_request = {}
        for name, product, variant_env in variants:
            counts = []
            for events in (few, many):
                workdir = Path(tmp) / f"{name}-{events}"
                workdir.mkdir()
                with contextlib.ExitStack() as stack:
                    url = stack.enter_context(database(args.database)) or f"sqlite:///{workdir / 'webhooks.sqlite3'}"
                    spec = {"kind": args.database, "product": product, "url": url, "sync": "full"}
                    counts.append(instructions(spec, events, args.warmup, workdir, variant_env))
            per_request[name] = (counts[1] - counts[0]) / (many - few)
            log(f"{name}: {per_request[name] / 1e6:.3f} million instructions per request")
        first = per_request[variants[1][0]] if args.baseline else None
        for name, _, _ in variants:
            value = per_request[name]
            rows.append([name, f"{value / 1e6:.3f}",
                         f"{value / first:.3f}" if first and name != "no-op" else "-"])
    print(f"# instructions per request (valgrind callgrind, user space, every thread): {args.database}, "
          f"BILL_VALIDATE through Flask's test client, ({many} - {few} requests) after {args.warmup} warm-up")
    print()
    print(table(rows, ["variant", "M instr/req", "vs baseline"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
