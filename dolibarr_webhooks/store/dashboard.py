"""Read-only questions the dashboard asks the store, and the workers' heartbeat.

Functions of a ``Store``, in SQLAlchemy Core like ``store.py``, so that they answer the same
on SQLite and PostgreSQL. The events page is a keyset page (newest first, "older" moves
the cursor): no ``OFFSET`` and no ``COUNT`` over a million rows. Schema version 6 holds the
indexes each query relies on; ``bench/dashboard.py`` times them on 1,000,000 events.

Everything the CLI already answers (``stats``, ``show``, ``replay``, ``quarantined``) is
read through the ``Store`` methods themselves, not here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import and_, delete, func, insert, or_, select, update

from . import payloads
from .queue import Store
from .schema import DEAD, DELIVERED, FAILED, PENDING, RUNNING, attempts, deliveries, events, storable, workers

PAGE_SIZE = 50
# What the events page's status filter means, in delivery states: a delivery being run is
# still pending for a person.
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    PENDING: (PENDING, RUNNING),
    FAILED: (FAILED,),
    DEAD: (DEAD,),
    DELIVERED: (DELIVERED,),
}
HEARTBEAT_INTERVAL = 10.0  # seconds between two heartbeats of a worker
ALIVE_WITHIN = 3 * HEARTBEAT_INTERVAL  # a worker not seen for longer is shown as gone
FORGET_AFTER = 86400.0  # rows of workers gone for a day are deleted


@dataclass(frozen=True)
class EventFilter:
    code: str | None = None
    source: str | None = None
    status: str | None = None  # a key of STATUS_FILTERS
    since: float | None = None
    until: float | None = None
    search: str | None = None  # an event id, or the start of a reference or a label
    before: tuple[float, str] | None = None  # the keyset cursor: (received_at, id) of the last row shown


_LIST_COLUMNS = (events.c.id, events.c.source, events.c.trigger_code, events.c.element, events.c.object_id,
                 events.c.ref, events.c.label, events.c.received_at, events.c.status, events.c.duplicate_of,
                 events.c.test, events.c.error, events.c.payload)
_NEWEST_FIRST = (events.c.received_at.desc(), events.c.id.desc())
_KEY = (events.c.id, events.c.received_at)
# Up to this many deliveries in the states filtered on, their events are fetched by id; more,
# and the newest events are read in batches, keeping those with such a delivery.
SPARSE = 2000
ID_CHUNK = 500  # ids per look-up (SQLite takes at most 32,766 parameters per statement)
SCAN_BATCH = 500
SCAN_BATCHES = 10  # a page reads at most 5,000 events, then offers to go on from there


def _after_prefix(term: str) -> str | None:
    """The least text above every text that starts with ``term``, in code point order: its
    last character's successor, past trailing U+10FFFF (None when nothing is left), and past
    the surrogates, which no column holds (``labels.encodable``)."""
    stem = term.rstrip("\U0010ffff")
    if not stem:
        return None
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return stem[:-1] + chr(following)


def _prefix(column, term: str, postgres: bool):
    """``lower(column)`` starts with ``term`` (already lower-case), as a range that the index on
    ``lower(column)`` answers, then ``LIKE`` to be exact. The range is in code point order: in a
    database's own collation (glibc's en_US.UTF-8, the usual one of a Debian or Ubuntu
    cluster, and ICU's en-US) ":" sorts before "9", and the range of "fa-0009", up to
    "fa-000:", held nothing. PostgreSQL's indexes are in "C" for it (schema version 14);
    SQLite's are in code point order already."""
    lowered = func.lower(column)
    if postgres:
        lowered = lowered.collate("C")
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    bounds = [lowered >= term, lowered.like(escaped + "%", escape="\\")]
    upper = _after_prefix(term)
    if upper is not None:
        bounds.append(lowered < upper)
    return and_(*bounds)


def _older_than(before: tuple[float, str] | None) -> list[Any]:
    if before is None:
        return []
    at, event_id = before
    return [or_(events.c.received_at < at, and_(events.c.received_at == at, events.c.id < event_id))]


def _conditions(filters: EventFilter, postgres: bool) -> list[Any]:
    """Every filter but the delivery status (see ``events_page``) and the cursor. Text as the
    columns hold it (``storable``: a NUL, which PostgreSQL's text cannot take, as ``\\u0000``)."""
    where: list[Any] = []
    if filters.code:  # through ix_events_code_search (see schema._SEARCH_INDEXES)
        where.append(func.lower(events.c.trigger_code) == storable(filters.code).lower())
    if filters.source:
        where.append(events.c.source == storable(filters.source))
    if filters.since is not None:
        where.append(events.c.received_at >= filters.since)
    if filters.until is not None:
        where.append(events.c.received_at < filters.until)
    term = storable((filters.search or "").strip())
    if term:
        lowered = term.lower()
        where.append(or_(events.c.id == term, _prefix(events.c.ref, lowered, postgres),
                         _prefix(events.c.label, lowered, postgres)))
    return where


def _keys_with_state(conn, where: list[Any], before, states: tuple[str, ...], wanted: int):
    """The newest ``wanted`` events (id, received_at) with a delivery in ``states``, and the
    cursor to go on from when the scan stopped before finding them all.

    Left to the planners, SQLite read every delivery in the state for the dense ones (50 s
    for "delivered" at 2,000,000 deliveries) and PostgreSQL the newest events one by one for
    the sparse ones: so the shape is chosen here, on the number of deliveries in the state."""
    ids = list(conn.execute(select(deliveries.c.event_id).where(deliveries.c.status.in_(states))
                            .limit(SPARSE + 1)).scalars())
    if len(ids) <= SPARSE and conn.dialect.name == "sqlite":
        # One join, from ix_deliveries_status to each event by id: 25 ms for 1,000 dead deliveries.
        return conn.execute(select(*_KEY).distinct().select_from(
            deliveries.join(events, events.c.id == deliveries.c.event_id))
            .where(deliveries.c.status.in_(states), *where, *_older_than(before))
            .order_by(*_NEWEST_FIRST).limit(wanted)).all(), None
    if len(ids) <= SPARSE:
        # Their events by id, sorted here: given that join, PostgreSQL read the newest events
        # one by one instead, probing each one's deliveries (1.5 s for 2,000 failed deliveries
        # among 2,000,000); without an ORDER BY and a LIMIT it can only look each id up.
        keys: list[Any] = []
        for start in range(0, len(ids), ID_CHUNK):
            keys += conn.execute(select(*_KEY).where(events.c.id.in_(ids[start:start + ID_CHUNK]), *where,
                                                     *_older_than(before))).all()
        keys = sorted(set(keys), key=lambda key: (key.received_at, key.id), reverse=True)
        return keys[:wanted], None
    found: list[Any] = []
    for _ in range(SCAN_BATCHES):
        batch = conn.execute(select(*_KEY).where(*where, *_older_than(before))
                             .order_by(*_NEWEST_FIRST).limit(SCAN_BATCH)).all()
        if not batch:
            return found, None
        # The states are checked here, not in SQL: given both conditions, SQLite read every
        # delivery in the state (6 s) rather than the batch's deliveries by event id.
        having = {row.event_id for row in conn.execute(select(deliveries.c.event_id, deliveries.c.status).where(
            deliveries.c.event_id.in_([key.id for key in batch]))) if row.status in states}
        for key in batch:
            if key.id in having:
                found.append(key)
                if len(found) == wanted:
                    return found, None
        before = (batch[-1].received_at, batch[-1].id)
    return found, before


def events_page(store: Store, filters: EventFilter,
                limit: int = PAGE_SIZE) -> tuple[list[dict[str, Any]], tuple[float, str] | None]:
    """One page of events, newest first, with their stored (scrubbed) payload parsed, and the
    cursor of the next (older) page, None at the end.

    In two steps: the page's keys first (the indexes answer them; no payload is read for an
    event that is not shown), then the rows of those keys."""
    where = _conditions(filters, store.is_postgres)
    states = STATUS_FILTERS.get(filters.status or "")
    with store._readonly() as conn:
        if states:
            keys, resume = _keys_with_state(conn, where, filters.before, states, limit + 1)
        else:
            keys, resume = conn.execute(select(*_KEY).where(*where, *_older_than(filters.before))
                                        .order_by(*_NEWEST_FIRST).limit(limit + 1)).all(), None
        shown = keys[:limit]
        rows = [dict(row._mapping) for row in conn.execute(
            select(*_LIST_COLUMNS).where(events.c.id.in_([key.id for key in shown])).order_by(*_NEWEST_FIRST))] \
            if shown else []
    for row in rows:
        row["payload"] = payloads.parsed(row["payload"])
    if len(keys) > limit:
        resume = (shown[-1].received_at, shown[-1].id)
    return rows, resume


def delivery_statuses(store: Store, event_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Each event's deliveries (plugin, status, attempts, last error), by event id."""
    ids = list(event_ids)
    found: dict[str, list[dict[str, Any]]] = {event_id: [] for event_id in ids}
    if not ids:
        return found
    query = (select(deliveries.c.event_id, deliveries.c.plugin, deliveries.c.status, deliveries.c.attempts,
                    deliveries.c.last_error)
             .where(deliveries.c.event_id.in_(ids)).order_by(deliveries.c.plugin))
    with store._readonly() as conn:
        for row in conn.execute(query):
            found[row.event_id].append(dict(row._mapping))
    return found


def failure_groups(store: Store, plugin: str | None = None,
                   statuses: Iterable[str] = (FAILED, DEAD)) -> list[dict[str, Any]]:
    """Failed and dead deliveries grouped by plugin, state and error: how many, since when,
    and the newest event of each group."""
    where = [deliveries.c.status.in_(list(statuses))]
    if plugin:
        where.append(deliveries.c.plugin == storable(plugin))
    query = (select(deliveries.c.plugin, deliveries.c.status, deliveries.c.last_error,
                    func.count().label("count"), func.min(deliveries.c.updated_at).label("first"),
                    func.max(deliveries.c.updated_at).label("last"), func.max(deliveries.c.event_id).label("event_id"))
             .where(*where)
             .group_by(deliveries.c.plugin, deliveries.c.status, deliveries.c.last_error)
             .order_by(deliveries.c.plugin, func.count().desc()))
    with store._readonly() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def _hour(column):
    return func.floor(column / 3600).label("hour")


def events_per_hour(store: Store, since: float) -> list[dict[str, Any]]:
    """Events received since ``since``, counted by hour (a number of hours since the epoch) and code."""
    hour = _hour(events.c.received_at)
    query = (select(hour, events.c.trigger_code, func.count().label("count"))
             .where(events.c.received_at >= since, events.c.trigger_code != "")
             .group_by(hour, events.c.trigger_code))
    with store._readonly() as conn:
        return [{"hour": int(r.hour), "code": r.trigger_code, "count": r.count} for r in conn.execute(query)]


def latency_per_hour(store: Store, since: float) -> list[dict[str, Any]]:
    """From an event's arrival to its delivery, for deliveries made since ``since``, by hour:
    how many, the mean and the longest, in seconds."""
    hour = _hour(deliveries.c.delivered_at)
    took = deliveries.c.delivered_at - deliveries.c.created_at
    query = (select(hour, func.count().label("count"), func.avg(took).label("mean"), func.max(took).label("longest"))
             .where(deliveries.c.delivered_at >= since).group_by(hour))
    with store._readonly() as conn:
        return [{"hour": int(r.hour), "count": r.count, "mean": float(r.mean or 0), "longest": float(r.longest or 0)}
                for r in conn.execute(query)]


def attempt_outcomes(store: Store, since: float) -> dict[str, dict[str, int]]:
    """Attempts started since ``since``, counted by plugin and outcome (delivered, failed, dead,
    timeout...): each plugin's recent failure rate."""
    query = (select(deliveries.c.plugin, attempts.c.outcome, func.count().label("count"))
             .join(deliveries, deliveries.c.id == attempts.c.delivery_id)
             .where(attempts.c.started_at >= since)
             .group_by(deliveries.c.plugin, attempts.c.outcome))
    found: dict[str, dict[str, int]] = {}
    with store._readonly() as conn:
        for row in conn.execute(query):
            found.setdefault(row.plugin, {})[row.outcome] = row.count
    return found


def oldest_waiting(store: Store) -> dict[str, Any] | None:
    """The delivery waiting longest (pending, running or failed), with its event's code and label."""
    query = (select(deliveries.c.event_id, deliveries.c.plugin, deliveries.c.status, deliveries.c.created_at,
                    events.c.trigger_code, events.c.label)
             .join(events, events.c.id == deliveries.c.event_id)
             .where(deliveries.c.status.in_((PENDING, RUNNING, FAILED)))
             .order_by(deliveries.c.created_at).limit(1))
    with store._readonly() as conn:
        row = conn.execute(query).first()
    return dict(row._mapping) if row else None


# -- the workers' heartbeat ---------------------------------------------------------------------
def beat(store: Store, name: str, started_at: float, plugins: Iterable[str]) -> None:
    """Say that worker ``name`` is alive; forget the workers gone for a day."""
    now = time.time()
    with store._write() as conn:
        seen = conn.execute(update(workers).where(workers.c.name == name).values(seen_at=now)).rowcount
        if not seen:
            conn.execute(insert(workers).values(name=name, started_at=started_at, seen_at=now,
                                                plugins=",".join(plugins)))
            conn.execute(delete(workers).where(workers.c.seen_at < now - FORGET_AFTER))


def forget(store: Store, name: str) -> None:
    """A worker stopping: it is gone, not silent."""
    with store._write() as conn:
        conn.execute(delete(workers).where(workers.c.name == name))


def workers_seen(store: Store) -> list[dict[str, Any]]:
    """Every worker seen within a day, the latest first, with ``alive``."""
    now = time.time()
    with store._readonly() as conn:
        rows = [dict(row._mapping) for row in conn.execute(select(workers).order_by(workers.c.seen_at.desc()))]
    for row in rows:
        row["age"] = now - row["seen_at"]
        row["alive"] = row["age"] <= ALIVE_WITHIN
    return rows
