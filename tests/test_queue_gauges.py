"""The store's part of a /metrics scrape (``queue_gauges``): the same counts as ``stats``
for what waits, read without going through the delivered rows."""

from __future__ import annotations

import time

import pytest

from dolibarr_webhooks.store.gauges import _BY_STATUS, _OLDEST, _QUARANTINED, WAITING, queue_gauges
from dolibarr_webhooks.store import DEAD, DELIVERED, FAILED
from dolibarr_webhooks.testing import make_event


@pytest.fixture
def store(migrated_store):
    return migrated_store


def test_queue_gauges_count_what_stats_counts_for_what_waits(store):
    for n in range(6):
        store.ingest(make_event("BILL_VALIDATE", id=1000 + n), ["log"])
    store.quarantine("evt_q1", b"{", "default", "not JSON", "0" * 64, time.time())
    outcomes = [(DELIVERED, None), (DELIVERED, None), (FAILED, time.time() + 60), (DEAD, None)]
    for status, retry_at in outcomes:
        claim = store.claim({"log": 1}, "test", 60)[0]
        store.finish(claim, status, None if status == DELIVERED else "boom", retry_at, "test")
    gauges, stats = queue_gauges(store), store.stats()
    assert gauges["deliveries"] == {s: stats["deliveries"][s] for s in WAITING} == {
        "pending": 2, "running": 0, "failed": 1, "dead": 1}
    assert gauges["quarantined"] == stats["quarantined"] == 1
    assert gauges["oldest_pending_age"] == pytest.approx(stats["oldest_pending_age"], abs=1)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_queue_gauges_read_indexes_not_tables(store):
    """Each query is answered from an index over the statuses it asks for: a year of delivered
    rows is never read at a scrape."""
    with store.engine.connect() as conn:
        for query in (_BY_STATUS, _OLDEST):
            plan = _plan(conn, query)
            # SEARCH: a range of an index; SCAN would be the whole table or index.
            assert "SEARCH" in plan and "INDEX" in plan and "SCAN" not in plan, plan
        # The quarantined events have an index of their own (schema version 12): all of it is read.
        assert _plan(conn, _QUARANTINED) == "SCAN events USING INDEX ix_events_quarantined"


def _plan(conn, query) -> str:
    sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
    return " ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
