"""Resident memory of the gunicorn web workers (contrib/gunicorn.conf.py, 5 workers) over
6,000 bodies, in three phases of 2,000, to see what makes it grow.

    python bench/rss.py [--bodies 2000] [--big 20] [--env NAME=VALUE ...]

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hostile_helpers import Hostile, _request, hostile_requests, send  # noqa: E402
from production_helpers import big_invoice, production_env  # noqa: E402

from dolibarr_webhooks.samples import sample_body  # noqa: E402
from dolibarr_webhooks.testing import running_service  # noqa: E402


def workers_of(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def snapshot(service) -> list[float]:
    return sorted(rss_mb(pid) for pid in workers_of(service.processes["web"].pid))


def ordinary(url: str, rng: random.Random) -> Hostile:
    body = json.loads(sample_body("BILL_VALIDATE"))
    body["object"]["id"] = rng.randrange(10**12)
    return Hostile("ordinary", _request(url, json.dumps(body).encode()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bodies", type=int, default=2000, help="bodies per phase (default 2000)")
    parser.add_argument("--big", type=int, default=20, help="10 MB and over-limit bodies in phase 3 (each)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    args = parser.parse_args(argv)
    rng = random.Random(15)
    extra = dict(item.split("=", 1) for item in args.env)
    with running_service(env=production_env(**extra), workers=5, worker=False) as service:
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
