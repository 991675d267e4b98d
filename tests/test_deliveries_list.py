"""``dolibarr-webhooks deliveries``: every delivery its filters ask for, newest event first,
read in that order from an index instead of sorted from every row of a state (issue #15: at
1,000,000 events SQLite took 1.8 s for the delivered ones; bench/growth.py)."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import select, update

from dolibarr_webhooks.ids import new_event_id
from dolibarr_webhooks.store import DEAD, DELIVERED, DELIVERY_STATES, FAILED, PENDING, RUNNING, deliveries, events
from dolibarr_webhooks.testing import make_event

DAY = 86400
PLUGINS = ["log", "mail", "sync"]


@pytest.fixture
def store(migrated_store):
    """30 events, one a day, each with a delivery for each plugin, in every state; the last
    one's id made half a second before its receipt, as the receiver makes them."""
    now = int(time.time())  # whole seconds: exact in the datetime of receipt
    states = [DELIVERED, DELIVERED, DEAD, FAILED, PENDING, RUNNING, DELIVERED]
    for n in range(30):
        received = now - (30 - n) * DAY
        made = received - 0.5 if n == 29 else received
        code = "BILL_VALIDATE" if n % 3 else "COMPANY_CREATE"
        event = dataclasses.replace(make_event(code, id=1000 + n), id=new_event_id(made),
                                    received_at=datetime.fromtimestamp(received, timezone.utc))
        migrated_store.ingest(event, PLUGINS)
        with migrated_store.engine.begin() as conn:
            for number, plugin in enumerate(PLUGINS):
                conn.execute(update(deliveries).where(deliveries.c.event_id == event.id, deliveries.c.plugin == plugin)
                             .values(status=states[(n + number) % len(states)]))
    migrated_store.last_received = received
    return migrated_store


def every_row(store, status=None, plugin=None, code=None, since=None, limit=100) -> list[tuple[str, str]]:
    """What the list must be, from every row, filtered and sorted here."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(deliveries.c.event_id, deliveries.c.plugin, deliveries.c.status,
                                   events.c.trigger_code, events.c.received_at)
                            .join(events, events.c.id == deliveries.c.event_id)).all()
    kept = [(row.event_id, row.plugin) for row in rows
            if (status is None or row.status == status) and (plugin is None or row.plugin == plugin)
            and (code is None or row.trigger_code == code) and (since is None or row.received_at >= since)]
    return sorted(kept, reverse=True)[:limit]


@pytest.mark.parametrize("status", [None, *DELIVERY_STATES])
def test_the_list_is_every_delivery_asked_for_newest_event_first(store, status):
    now = time.time()
    asked = [{}, {"plugin": "mail"}, {"code": "COMPANY_CREATE"}, {"since": now - 10.5 * DAY},
             {"since": store.last_received}, {"since": now}, {"plugin": "sync", "since": now - 20 * DAY},
             {"limit": 4}, {"code": "BILL_VALIDATE", "limit": 3}]
    for filters in asked:
        listed = store.list_deliveries(status=status, **filters)
        assert [(row["event_id"], row["plugin"]) for row in listed] == every_row(store, status, **filters), filters
        assert all(row["status"] == status for row in listed) if status else True
    assert every_row(store, status)  # every state is in the store
    # The event whose id was made before its receipt is found by a search from that receipt.
    assert {row["event_id"] for row in store.list_deliveries(since=store.last_received)} == {
        event_id for event_id, _ in every_row(store, since=store.last_received)} != set()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("status", [None, DELIVERED, DEAD])
def test_the_states_that_pile_up_are_read_in_order_from_an_index(store, status):
    """SQLite's planner, left to itself, took ix_deliveries_status and sorted every delivery of
    the state (and ix_deliveries_due, every delivery of a plugin); a search by time read the
    events older than its start too."""
    from sqlalchemy import event

    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    for filters in ({}, {"plugin": "log"}, {"since": time.time() - 5 * DAY}):
        event.listen(store.engine, "before_cursor_execute", record)
        try:
            store.list_deliveries(status=status, **filters)
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        statement, parameters = statements.pop()
        with store.engine.connect() as conn:
            plan = " ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
        assert "TEMP B-TREE" not in plan and "ix_deliveries_status" not in plan, (filters, plan)
        assert "ix_deliveries_dead" in plan if status == DEAD else "sqlite_autoindex_deliveries_1" in plan, plan
        if "since" in filters:  # from the first id that can be that recent, not from the oldest
            assert "(event_id>?)" in plan, plan
