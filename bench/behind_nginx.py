"""The production stack's answer through nginx: contrib/nginx/dolibarr-webhooks.conf as
shipped, against the same site with a new connection to gunicorn per request.

    python bench/behind_nginx.py [--concurrency 1,16] [--rounds 3] [--duration 4] [--new-connections]

One gunicorn under contrib/gunicorn.conf.py (SQLite), two nginx in front of it, each from the
contrib site rendered as the production tests render it (tests/production_helpers.py), its
flood limit taken out (wrk posts from one address far above 50 a second): ``shipped`` keeps
its connections to gunicorn alive (the upstream's ``keepalive``), ``no-keepalive`` is the
same site without that line, as it was until issue #15's keep-alive. wrk posts the
``BILL_VALIDATE`` sample over HTTPS, kept alive to nginx (``--new-connections``: a new TLS
connection per request, as Dolibarr's curl does; wrk then pays the handshakes). Rounds are
interleaved; medians of req/s, p50 and p99, and CPU time a request of gunicorn's processes
and of nginx's.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
from pathlib import Path

from _common import (BENCH_DIR, GunicornSettings, Wrk, database, log, median, product_server, table,
                     tree_cpu)

sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
import production_helpers  # noqa: E402

PRODUCTION_CONFIG = BENCH_DIR.parent / "contrib" / "gunicorn.conf.py"
UPSTREAM = re.compile(r"^upstream dolibarr_webhooks \{.*?^\}", re.MULTILINE | re.DOTALL)
# In the upstream block only: the server block's keepalive_timeout is the clients' own.
UPSTREAM_KEEPALIVE = re.compile(r"\n[ \t]*keepalive(_timeout)? [^;\n]*;")
FLOOD_LIMIT = re.compile(r"\n[ \t]*limit_req zone=[^;\n]*;")


def site(keepalive: bool):
    """The rendered contrib site without the flood limit, and without the upstream's
    keep-alive unless ``keepalive``."""
    def edited(text: str) -> str:
        text = FLOOD_LIMIT.sub("", text)
        upstream = UPSTREAM.search(text)
        if not upstream or not UPSTREAM_KEEPALIVE.search(upstream.group()):
            sys.exit("the contrib site keeps no connection to gunicorn alive: nothing to compare")
        if keepalive:
            return text
        return text[:upstream.start()] + UPSTREAM_KEEPALIVE.sub("", upstream.group()) + text[upstream.end():]
    return edited


@contextlib.contextmanager
def nginx_in_front(folder: Path, upstream_port: int, keepalive: bool):
    nginx = production_helpers.Nginx(folder, upstream_port, edit=site(keepalive))
    result = nginx.test_config()
    if result.returncode != 0:
        sys.exit(f"nginx refuses the site: {result.stderr}")
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--new-connections", action="store_true")
    args = parser.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    targets = {"shipped": True, "no-keepalive": False}
    print("# behind_nginx: gunicorn -c contrib/gunicorn.conf.py (SQLite) behind nginx, wrk over HTTPS"
          + (", a new connection per request" if args.new_connections else ", kept alive to nginx")
          + f", {args.duration}s per point after 1s warm-up", flush=True)
    results: dict[tuple[str, int], list] = {}
    with tempfile.TemporaryDirectory(prefix="dw-bench-nginx-") as tmp, contextlib.ExitStack() as stack:
        url = stack.enter_context(database("sqlite"))
        server = stack.enter_context(product_server(GunicornSettings(None, None, 1, PRODUCTION_CONFIG),
                                                    database_url=url, TRUSTED_PROXIES="1"))
        nginxes = {name: stack.enter_context(nginx_in_front(Path(tmp) / name, server.port, keepalive))
                   for name, keepalive in targets.items()}
        wrk = Wrk(Path(tmp), new_connections=args.new_connections)
        secret = server.env["DOLIBARR_WEBHOOKS_SECRET"]
        for round_number in range(1, args.rounds + 1):
            for connections in concurrencies:
                for name, nginx in nginxes.items():
                    webhook = f"{nginx.https}/webhook/{secret}"
                    wrk.run(webhook, connections, 1)
                    nginx_before = tree_cpu(nginx.process.pid)
                    result = wrk.run(webhook, connections, args.duration, server_pid=server.web_pid)
                    nginx_ms = (tree_cpu(nginx.process.pid) - nginx_before) / max(1, result.requests) * 1000
                    log(f"round {round_number} c={connections} {name}: {result.rps:.0f} req/s, p50 "
                        f"{result.p50_ms:.2f} ms, p99 {result.p99_ms:.1f} ms, errors {result.failed}")
                    results.setdefault((name, connections), []).append(
                        (result.rps, result.p50_ms, result.p99_ms, result.server_cpu_ms, nginx_ms, result.failed))
    rows = []
    for connections in concurrencies:
        for name in targets:
            points = results[(name, connections)]
            rows.append([name, connections, *(f"{median([p[i] for p in points]):.{d}f}"
                                              for i, d in ((0, 0), (1, 2), (2, 1), (3, 3), (4, 3))),
                         sum(p[5] for p in points)])
    print()
    print(table(rows, ["site", "conc", "req/s", "p50 ms", "p99 ms", "gunicorn cpu ms/req", "nginx cpu ms/req",
                       "errors"]))
    print(f"\n(median of {args.rounds} interleaved rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
