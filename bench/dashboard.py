"""Does the dashboard's events page answer in under 100 ms with 1,000,000 stored events?

    python bench/dashboard.py [--database sqlite|postgresql|both] [--events 1000000] [--repeat 20]

Fills a store (schema version 6, its indexes) by bulk insert with a year of a busy Dolibarr:
invoices validated and paid (``FA2601-0001``...), third parties created, orders, payments,
spread over 365 days, each with a delivery to ``log`` and one to ``sync``; one delivery in a
thousand is dead, one in five hundred failed. Then, in this process, it times the store
queries behind the events page (``store.dashboard.events_page`` and the per-plugin statuses of
the page's 50 rows), and the whole page as a browser gets it (Flask's test client, logged
in: queries, summaries in words, template), for the default view, a filter by code, a search
by reference, the dead deliveries, the second page; and the overview. Median and slowest of
``--repeat`` calls, in milliseconds. Nothing is asserted: the figures are printed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from pathlib import Path

from _common import database, log, settle, table

from dolibarr_webhooks import create_app, fastjson
from dolibarr_webhooks.store import dashboard as queries
from dolibarr_webhooks.store import DEAD, DELIVERED, FAILED, Store, deliveries, events

BATCH = 10_000
YEAR = 365 * 86400
PASSWORD = "bench dashboard password"
# (code, element, share of the events)
MIX = [("BILL_VALIDATE", "facture", 25), ("BILL_PAYED", "facture", 20), ("COMPANY_CREATE", "societe", 15),
       ("ORDER_VALIDATE", "commande", 20), ("PAYMENT_CUSTOMER_CREATE", "payment", 15), ("PROPAL_CLOSE_SIGNED",
                                                                                        "propal", 5)]
CYCLE = [entry for entry in MIX for _ in range(entry[2])]
PREFIX = {"facture": "FA", "commande": "CO", "payment": "PAY", "propal": "PR"}


def reference(element: str, n: int, received: float) -> str | None:
    if element == "societe":
        return None
    month = time.strftime("%y%m", time.gmtime(received))
    return f"{PREFIX[element]}{month}-{n % 100000:05d}"


def fill(store: Store, count: int) -> None:
    """``count`` accepted events with their deliveries, received over the past year, oldest first."""
    now = time.time()
    for first in range(0, count, BATCH):
        rows, dels = [], []
        for n in range(first, min(first + BATCH, count)):
            code, element, _share = CYCLE[n % len(CYCLE)]
            received = now - YEAR * (1 - n / count)
            ref = reference(element, n, received)
            name = f"Company {n % 5000} SARL"
            obj = {"id": n, "element": element, "ref": ref, "socid": n % 5000, "entity": 1}
            if element == "societe":
                obj.update(name=name, email=f"contact{n % 5000}@example.com")
            else:
                obj.update(total_ht="1869.80", total_tva="373.96", total_ttc="2243.76",
                           thirdparty={"id": n % 5000, "name": name})
            label = ref or name
            event_id = f"evt_{int(received * 1000):012x}{n:016x}"
            payload = fastjson.dumps({"id": event_id, "trigger_code": code, "object": obj, "element": element,
                                      "object_id": str(n), "ref": ref, "entity": "1", "label": label,
                                      "source": "default", "received_at": time.strftime(
                                          "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(received))})
            rows.append(dict(id=event_id, source="default", trigger_code=code, sent_code=None, element=element,
                             object_id=str(n), ref=ref, entity="1", label=label, received_at=received,
                             body_sha256=f"{n:064x}", test=False, status="accepted", duplicate_of=None,
                             payload=payload, raw_body=None, error=None, remote_addr="10.0.0.1"))
            for plugin in ("log", "sync"):
                state = DEAD if plugin == "sync" and n % 1000 == 999 else FAILED if plugin == "sync" and \
                    n % 500 == 250 else DELIVERED
                dels.append(dict(event_id=event_id, plugin=plugin, status=state, attempts=1, runs=1, reclaims=0,
                                 next_attempt_at=received, created_at=received, updated_at=received,
                                 delivered_at=received + 0.05 if state == DELIVERED else None,
                                 last_error=None if state == DELIVERED else "HTTPError: 503 from the ERP"))
        with store.engine.begin() as conn:
            conn.execute(events.insert(), rows)
            conn.execute(deliveries.insert(), dels)
        if first % 200_000 == 0:
            log(f"  {first + len(rows):,} events")
    settle(store)  # SQLite keeps no statistics: the service never runs ANALYZE


def timed(call, repeat: int) -> tuple[float, float]:
    """(median, slowest) wall milliseconds of ``call``, after one call to warm caches."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times)


def measure(kind: str, url: str, count: int, repeat: int, filled: bool = False) -> list[list[str]]:
    store = Store(url)
    store.migrate()
    if not filled:
        started = time.time()
        fill(store, count)
        log(f"{kind}: {count:,} events filled in {time.time() - started:.0f} s")
    app = create_app({"DATABASE_URL": url, "SECRET": "bench-secret-0123456789", "ADMIN_PASSWORD": PASSWORD,
                      "ANNOUNCE": False, "AUTO_MIGRATE": False, "LOG_LEVEL": "warning",
                      "ADMIN_SECRET_KEY": "bench-key-" * 4, "PLUGINS": ["log", "catalogue"]})
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
    client.post("/admin/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token})
    page_store = app.extensions["dolibarr_webhooks"].store

    newest, cursor = queries.events_page(store, queries.EventFilter())
    wanted_ref = newest[len(newest) // 2]["ref"] or newest[0]["ref"]
    old_ref = reference("facture", count // 3, time.time() - YEAR * 2 / 3)
    views = [
        ("default view", queries.EventFilter(), ""),
        ("code BILL_PAYED", queries.EventFilter(code="BILL_PAYED"), "code=BILL_PAYED"),
        ("code PROPAL_CLOSE_SIGNED", queries.EventFilter(code="PROPAL_CLOSE_SIGNED"), "code=PROPAL_CLOSE_SIGNED"),
        (f"search {wanted_ref}", queries.EventFilter(search=wanted_ref), f"q={wanted_ref}"),
        (f"search {old_ref} (8 months old)", queries.EventFilter(search=old_ref), f"q={old_ref}"),
        ("search 'company 42' (a name)", queries.EventFilter(search="company 42"), "q=company+42"),
        ("status dead (one in 1,000)", queries.EventFilter(status=DEAD), "status=dead"),
        ("status failed (one in 500)", queries.EventFilter(status=FAILED), "status=failed"),
        ("status delivered", queries.EventFilter(status=DELIVERED), "status=delivered"),
        ("second page", queries.EventFilter(before=cursor), f"before={cursor[0]!r}:{cursor[1]}"),
    ]
    rows = []
    for name, filters, query in views:
        def page_queries(filters=filters):
            found, _ = queries.events_page(page_store, filters)
            queries.delivery_statuses(page_store, [row["id"] for row in found])
            return found

        found = len(page_queries())
        q_median, q_max = timed(page_queries, repeat)

        def whole_page(query=query):
            response = client.get("/admin/events?" + query)
            assert response.status_code == 200, response.status_code
            response.close()

        p_median, p_max = timed(whole_page, repeat)
        rows.append([kind, name, str(found), f"{q_median:.1f}", f"{q_max:.1f}", f"{p_median:.1f}", f"{p_max:.1f}"])

    def overview():
        response = client.get("/admin/")
        assert response.status_code == 200
        response.close()

    s_median, s_max = timed(page_store.stats, max(3, repeat // 4))
    rows.append([kind, "Store.stats() (the overview keeps it 15 s)", "-", f"{s_median:.1f}", f"{s_max:.1f}", "-", "-"])
    o_median, o_max = timed(overview, max(3, repeat // 4))
    rows.append([kind, "overview page, refreshed (24 h charts)", "-", "-", "-", f"{o_median:.1f}", f"{o_max:.1f}"])
    page_store.dispose()
    store.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--store", action="append", default=[], metavar="URL",
                        help="measure this store, filled by an earlier run's fill() with --events events, instead")
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    rows = []
    for url in args.store:
        rows += measure(url.split(":", 1)[0], url, args.events, args.repeat, filled=True)
    kinds = [] if args.store else kinds
    with tempfile.TemporaryDirectory(prefix="dw-bench-dashboard-") as tmp:
        for kind in kinds:
            with database(kind) as url:
                rows += measure(kind, url or f"sqlite:///{Path(tmp) / 'dashboard.sqlite3'}", args.events,
                                args.repeat)
    print(f"\nThe events page over {args.events:,} events (2 deliveries each); milliseconds, median and slowest "
          f"of {args.repeat} calls")
    print(table(rows, ["store", "view", "rows", "queries p50", "queries max", "page p50", "page max"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
