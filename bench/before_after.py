"""The request path before and after a change: ingest CPU per request and POST-to-handler
latency of the working tree against a git revision, side by side in one run.

    python bench/before_after.py --baseline REV [--database sqlite|postgresql] [--serve | --production]
                                 [--concurrency 1,16] [--duration 5] [--rounds 3] [--events 100]
                                 [--profile SECONDS] [--no-latency]

Two durable receivers run at once under the same gunicorn settings (``ingest.py``'s, by
default 2 sync workers): the core package of ``REV`` (``git archive``, as ``ingest.py
--baseline``) and the working tree's, each on its own store. At each concurrency ``wrk``
posts to one, then the other, interleaved over the rounds; the figure to read is the
server's CPU time per answered request (steadier than req/s on a shared machine), then
p50 and req/s, and the ratio working tree / baseline of the points taken in the same
round. Then ``latency.py``'s measure, from the POST to the moment a plugin's handler
ran, for each core in turn (idle worker, one event at a time). With ``--profile``, py-spy
samples each receiver's web processes under load at the highest concurrency and prints
where their CPU goes (the functions with the largest share of samples, on-CPU only).

Made for the renovations of issues #12 and #15: re-run it after a merge with the merge's
base as ``--baseline``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from _common import (NCPU, PRODUCTION_CONFIG, GunicornSettings, Wrk, core_at, database, interleaved, interleaved_report,
                     log, plugin_venv, product_server, table)

import latency


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, metavar="GIT_REVISION")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--serve", action="store_true",
                        help="serve's settings: ThreadWorker processes (2 per CPU) of 16 threads")
    parser.add_argument("--production", action="store_true", help="contrib/gunicorn.conf.py's settings")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=100, help="events of the latency measure, per core; 0: none")
    parser.add_argument("--no-latency", dest="events", action="store_const", const=0)
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="also sample the web processes of each core with py-spy for this long")
    parser.add_argument("--profile-concurrency", type=int, default=None, metavar="N",
                        help="connections while profiling (default: the highest of --concurrency)")
    parser.add_argument("--gil", action="store_true",
                        help="profile only the thread holding the GIL (Python's own CPU time, not SQLite's)")
    parser.add_argument("--top", type=int, default=20)
    return parser.parse_args(argv)


def gunicorn_settings(args) -> GunicornSettings:
    if args.production:
        return GunicornSettings(None, None, 1, PRODUCTION_CONFIG)
    if args.serve:
        return GunicornSettings.serve()
    return GunicornSettings()


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (gunicorn's workers)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{name}/stat") as fh:
                    data = fh.read()
                if int(data[data.rindex(")") + 2:].split()[1]) == pid:
                    found.append(int(name))
    return found


def profile(server, wrk: Wrk, connections: int, seconds: int, workdir: Path, label: str,
            gil: bool = False) -> collections.Counter:
    """Folded stacks (py-spy ``--format raw``) of every web process of ``server``, sampled
    while wrk loads it: {stack: samples}."""
    if not shutil.which("py-spy", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]):
        sys.exit("py-spy is not installed: pip install py-spy")
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    outputs, spies = [], []
    for pid in children(server.web_pid):
        out = workdir / f"{label}-{pid}.txt"
        outputs.append(out)
        spies.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250",
                                       "--format", "raw", "-o", str(out), *(["--gil"] if gil else [])],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    load = threading.Thread(target=wrk.run, args=(server.webhook_url, connections, seconds + 1))
    load.start()
    for spy_process in spies:
        spy_process.wait()
    load.join()
    stacks: collections.Counter = collections.Counter()
    for out in outputs:
        if out.exists():
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if stack and count.isdigit():
                    stacks[stack] += int(count)
    return stacks


def _function(frame: str) -> str:
    """``name (path/to/module.py:LINE)`` -> ``name (module.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})" if where else name


def profile_rows(stacks: collections.Counter, top: int) -> list[list[str]]:
    """The functions with the most samples: own (the frame running) and total (anywhere on
    the stack), as shares of all samples."""
    total = sum(stacks.values()) or 1
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    for stack, count in stacks.items():
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    rows = []
    for name, count in inclusive.most_common(top):
        rows.append([name[:70], f"{count / total:.1%}", f"{own[name] / total:.1%}"])
    rows.append(["-- own time --", "", ""])
    for name, count in own.most_common(top):
        rows.append([name[:70], f"{inclusive[name] / total:.1%}", f"{count / total:.1%}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gunicorn = gunicorn_settings(args)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    print(f"# before/after: {NCPU} CPUs, {args.database}, gunicorn {gunicorn.describe()}, "
          f"@{args.baseline} against the working tree, {args.duration}s per point, {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="dw-bench-ba-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        cores = {f"@{args.baseline}": core_at(args.baseline, workdir / "baseline"), "working tree": None}
        wrk = Wrk(workdir)
        servers = {}
        for label, core in cores.items():
            url = stack.enter_context(database(args.database))
            servers[label] = stack.enter_context(product_server(gunicorn, database_url=url, core=core))
        log(f"servers up: {', '.join(servers)}")
        results = interleaved(list(servers.items()), concurrencies, args.rounds, args.duration, wrk, args.warmup)
        profiles = {}
        profiled_at = args.profile_concurrency or concurrencies[-1]
        if args.profile:
            for label, server in servers.items():
                log(f"py-spy on {label} at c={profiled_at} for {args.profile}s")
                profiles[label] = profile(server, wrk, profiled_at, args.profile, workdir,
                                          label.replace(" ", "-").replace("@", "at-"), args.gil)
        stack.close()

        series = {}
        if args.events:
            log("installing the benchstamp plugin into a virtual environment")
            python = plugin_venv(workdir, "benchstamp", latency.STAMP_PLUGIN)
            from dolibarr_webhooks.samples import sample_body

            body = sample_body("BILL_VALIDATE")
            for label, core in cores.items():
                log(f"latency of {label}: {args.events} events")
                series[label] = latency.measure(args.database, python, args.events, 10, (0.02, 0.12), body,
                                                workdir, core=core)

    print()
    print(interleaved_report(results, list(cores), concurrencies, "core"))
    if series:
        print()
        rows = [[label, name, *summary.row()] for label, named in series.items() for name, summary in named.items()
                if name in ("POST -> 2xx", "POST -> handler ran")]
        print(table(rows, ["core", "interval", "n", "median ms", "p95 ms", "p99 ms", "max ms"]))
    for label, stacks in profiles.items():
        print(f"\n# py-spy, {label}: {sum(stacks.values())} samples of the web processes at c={profiled_at} "
              f"({'the thread holding the GIL' if args.gil else 'threads py-spy sees running'}; total: anywhere on "
              "the stack, own: the running frame)")
        print(table(profile_rows(stacks, args.top), ["function", "total", "own"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
