"""Resident memory of the gunicorn web workers (contrib/gunicorn.conf.py: as many processes as
it starts on this machine, of 16 threads) over 6,000 bodies, in three phases of 2,000, to see
what makes it grow.

    python bench/rss.py [--bodies 2000] [--big 20] [--env NAME=VALUE ...]
    python bench/rss.py --steady 100000

``--steady``: the web workers and the delivery worker process over 100,000 ordinary events
(wrk, 8 connections), RSS of each after every tenth, and the deliveries still waiting; then,
the posts stopped, the seconds until none waits, and every process's RSS once it is so.

Phase 1: ordinary events (the 15 KB BILL_VALIDATE, unique ids). Phase 2: hostile bodies
(tests/hostile_helpers.py, without the stalled ones). Phase 3: ordinary events with ``--big``
10 MB invoices and ``--big`` chunked bodies over the 16 MiB limit among them. After each
phase: every worker's RSS (from /proc), smallest, median and largest. ``--env`` passes a
setting to the service (``MALLOC_ARENA_MAX=2``, for instance).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_helpers import Hostile, _request, hostile_requests, send  # noqa: E402
from production_helpers import big_invoice, production_env, worker_pids  # noqa: E402

from dolibarr_webhooks.samples import sample_body  # noqa: E402
from dolibarr_webhooks.testing import running_service, wait_for  # noqa: E402

DRAIN_TIMEOUT = 600.0  # seconds the backlog left by --steady's posts is given to drain


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def snapshot(service) -> list[float]:
    return sorted(rss_mb(pid) for pid in worker_pids(service.processes["web"].pid))


def ordinary(url: str, rng: random.Random) -> Hostile:
    body = json.loads(sample_body("BILL_VALIDATE"))
    body["object"]["id"] = rng.randrange(10**12)
    return Hostile("ordinary", _request(url, json.dumps(body).encode()))


def steady(events: int, steps: int, extra: dict[str, str]) -> None:
    """``--steady``: the web workers and the delivery worker over ``events`` ordinary events
    posted by wrk (8 connections), RSS after each tenth, with the backlog the worker left."""
    import tempfile

    from _common import Wrk

    env = production_env(DOLIBARR_WEBHOOKS_PLUGINS="log", **extra)
    with running_service(env=env, workers=None, worker=True) as service, \
            tempfile.TemporaryDirectory(prefix="dw-bench-rss-") as tmp:
        wrk = Wrk(Path(tmp))
        worker_pid = service.processes["worker"].pid
        rows = [(0, snapshot(service), rss_mb(worker_pid), 0)]
        sent = 0
        for step in range(1, steps + 1):
            while sent < events * step // steps:
                sent += wrk.run(service.webhook_url, 8, 2).requests
            waiting = _waiting(service)
            rows.append((sent, snapshot(service), rss_mb(worker_pid), waiting))
            print(f"{sent} events: web {rows[-1][1]}, worker {rows[-1][2]:.1f} MB, {waiting} waiting",
                  file=sys.stderr, flush=True)
        backlog, drained = rows[-1][3], drain(service, DRAIN_TIMEOUT)
        rows.append(("drained", snapshot(service), rss_mb(worker_pid), _waiting(service)))
    print(f"{'events':>8} {'web min MB':>10} {'median':>7} {'max MB':>7} {'worker MB':>9} {'waiting':>8}")
    for sent, web, worker, waiting in rows:
        print(f"{sent:>8} {web[0]:10.1f} {statistics.median(web):7.1f} {web[-1]:7.1f} {worker:9.1f} {waiting:8}")
    if drained is None:
        print(f"the backlog of {backlog} deliveries was not drained in {DRAIN_TIMEOUT:.0f} s")
    else:
        print(f"the backlog of {backlog} deliveries drained in {drained:.1f} s after the last post")


def _waiting(service) -> int:
    stats = service.stats()
    return stats["deliveries"]["pending"] + stats["deliveries"]["running"]


def drain(service, timeout: float) -> float | None:
    """Seconds until no delivery is waiting, once the posts stop (None: still some after
    ``timeout``). On a slow machine the web's load leaves the worker too little CPU to keep
    up, and the deliveries wait until the posts stop."""
    started = time.monotonic()
    try:
        wait_for(lambda: not _waiting(service), timeout, interval=0.5, message="no delivery waiting")
    except TimeoutError:
        return None
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=2000, help="bodies per phase (default 2000)")
    parser.add_argument("--big", type=int, default=20, help="10 MB and over-limit bodies in phase 3 (each)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument("--steady", type=int, default=0, metavar="EVENTS",
                        help="instead of the phases: this many ordinary events, with the delivery worker, RSS of "
                             "every process after each tenth")
    args = parser.parse_args(argv)
    rng = random.Random(15)
    extra = dict(item.split("=", 1) for item in args.env)
    if args.steady:
        return steady(args.steady, 10, extra)
    with running_service(env=production_env(**extra), workers=None, worker=False) as service:
        url = f"/webhook/{service.secret}"
        invoice = big_invoice(10 * 1024 * 1024)[0]
        phases = {
            "ordinary events": [ordinary(url, rng) for _ in range(args.bodies)],
            "hostile bodies": hostile_requests(service.secret, args.bodies, seed=15, stalls=0, oversized=0),
            "with 10 MB and over-limit bodies": (
                [ordinary(url, rng) for _ in range(args.bodies - 2 * args.big)]
                + [Hostile("10 MB invoice", _request(url, invoice.replace(b"PROV4242", b"PROV%d" % n)))
                   for n in range(args.big)]
                + [Hostile("over the limit", _request(url, b"", chunked=True)[:-5], chunk_mib=17)
                   for _ in range(args.big)]),
        }
        rows = [("start", snapshot(service), 0)]
        for name, requests in phases.items():
            rng.shuffle(requests)
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda r: send(service.port, r), requests))
            errors = sum(1 for a in answers if a.status is not None and a.status >= 500)
            rows.append((name, snapshot(service), errors))
    print(f"{'after':36} {'workers':>7} {'min MB':>7} {'median':>7} {'max MB':>7} {'5xx':>4}")
    for name, sizes, errors in rows:
        print(f"{name:36} {len(sizes):7} {sizes[0]:7.1f} {statistics.median(sizes):7.1f} {sizes[-1]:7.1f} "
              f"{errors:4}")


if __name__ == "__main__":
    main()
