"""Reading the store for people, and the operators' changes: statistics, listings, one
event's story, the events of one object, scrubbing again, replay and purge (the CLI's)."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from sqlalchemy import and_, delete, func, insert, literal, or_, select, text, union_all, update

from .. import fastjson
from ..ids import earliest_event_id, event_id_floor
from . import payloads
from .schema import (ACCEPTED, DEAD, DEAD_ONLY, DELIVERED, DELIVERY_STATES, DUPLICATE, FOLD_MARGIN, HORIZON, LATE,
                     PENDING, QUARANTINED, RECLAIMED, RUNNING, TALLIED_DELIVERIES, attempts, deliveries, events,
                     fold_events, storable, tallies)

# Each distinct scrub rule in one index look-up (a loose index scan, on both databases).
_DISTINCT_RULES = text(
    "WITH RECURSIVE rules(rule) AS ("
    " SELECT (SELECT scrub_rule FROM events WHERE scrub_rule IS NOT NULL ORDER BY scrub_rule LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT scrub_rule FROM events WHERE scrub_rule > rules.rule ORDER BY scrub_rule LIMIT 1)"
    " FROM rules WHERE rules.rule IS NOT NULL"
    ") SELECT rule FROM rules WHERE rule IS NOT NULL"
)

# The deliveries ``stats`` counts row by row, through ix_deliveries_status: the queue.
_QUEUED = tuple(state for state in DELIVERY_STATES if state not in TALLIED_DELIVERIES)

# The states that pile up, listed by SQLite in the listing's order. Its planner has no
# statistics and took ix_deliveries_status for any state, then sorted every delivery in it: 1.8 s
# for "delivered" at 1,000,000 events, 5 ms for their 1,000 dead. A subquery carries what steers
# it (SQLAlchemy renders no index hint for SQLite): the partial index of the dead, and for the
# delivered, a unary plus that keeps the status from any index, so that the unique index is
# read from its end. PostgreSQL's planner finds both plans itself (bench/growth.py).
_SQLITE_LISTED = {
    DEAD: "SELECT * FROM deliveries INDEXED BY ix_deliveries_dead WHERE status = 'dead'",
    DELIVERED: "SELECT * FROM deliveries WHERE +status = 'delivered'",
}

# Events deleted per transaction by ``purge``, delivery ids per transaction of ``replay``. The
# requests wait for SQLite's writers' turn while a chunk is written, and each chunk is a
# commit. Under an ingest every 10 ms (bench/backlog.py), 100,000 old events purged in
# chunks of 100 took 12 s (ingest p99 20 ms), 200,000 in chunks of 500 23 s (p99 92 ms); in
# one transaction, 17 s during which every ingest failed at its deadline. 100,000 delivered
# deliveries replayed: 1.0 s (p99 13 ms). On PostgreSQL, the tallies row rewritten for every
# delivery made one transaction quadratic: 100,000 purged in 112 s, replayed in 97 s; in
# chunks, 13 and 4.7 s.
PURGE_CHUNK = 100
REPLAY_CHUNK = 500


class Inspection:
    """The operators' side of ``Store`` (a base class of it): its transactions are the store's."""

    # -- inspection -------------------------------------------------------------
    def queue_gauges(self) -> dict[str, Any]:
        """What ``/metrics`` reads at each scrape: only the deliveries not done yet (gauges)."""
        from .gauges import queue_gauges

        return queue_gauges(self)

    def stats(self) -> dict[str, Any]:
        """Counts of the whole store that take the same time at any size: what piles up is
        read from its tallies (schema versions 9 and 11), the queue and the rare counts through
        indexes of their rows only, and on PostgreSQL the events after the horizon (the last two
        to three minutes while a worker runs) through their ids (bench/growth.py)."""
        now = time.time()
        with self._readonly() as conn:
            # The finished deliveries' tallies and the queue in one statement, one snapshot: a
            # delivery finished between two statements would be counted in neither (on
            # PostgreSQL each statement sees its own), one replayed in both.
            counts = conn.execute(union_all(
                select(tallies.c.subject, tallies.c.plugin, tallies.c.status, func.sum(tallies.c.count))
                .group_by(tallies.c.subject, tallies.c.plugin, tallies.c.status),
                select(literal("deliveries"), deliveries.c.plugin, deliveries.c.status, func.count())
                .where(deliveries.c.status.in_(_QUEUED)).group_by(deliveries.c.plugin, deliveries.c.status),
            )).all()
            if self.is_postgres:  # its events after the horizon (schema.HORIZON), counted here
                horizon = next((int(count) for subject, _, _, count in counts if subject == HORIZON), 0)
                # None folded yet: every event, in an index-only scan of ix_events_status
                # (the range on ids read the table: 257 against 57 ms at 1,000,000). A fold
                # committed between the two statements counts nothing twice: the events it
                # folded are after the horizon read above, so counted here only.
                after = [events.c.id >= event_id_floor(horizon)] if horizon else []
                counts += conn.execute(select(literal("events"), literal(""), events.c.status, func.count())
                                       .where(*after).group_by(events.c.status)).all()
            oldest = conn.execute(select(func.min(deliveries.c.created_at))
                                  .where(deliveries.c.status.in_(_QUEUED))).scalar()
            reclaims = conn.execute(select(func.sum(deliveries.c.reclaims)).where(RECLAIMED)).scalar()
            late = conn.execute(select(func.count()).where(LATE)).scalar()
        by_event: dict[str, int] = {}
        totals = {state: 0 for state in DELIVERY_STATES}
        plugins: dict[str, dict[str, int]] = {}
        for subject, plugin, state, count in counts:
            if not count:
                continue  # a tally back to zero: nothing of it is stored
            if subject == HORIZON:
                continue
            if subject == "events":
                by_event[state] = by_event.get(state, 0) + int(count)
                continue
            totals[state] = totals.get(state, 0) + int(count)
            plugins.setdefault(plugin, {s: 0 for s in DELIVERY_STATES})[state] = int(count)
        return {
            "events": by_event.get(ACCEPTED, 0),
            "duplicates": by_event.get(DUPLICATE, 0),
            "quarantined": by_event.get(QUARANTINED, 0),
            "deliveries": totals,
            "plugins": plugins,
            "oldest_pending_age": round(now - oldest, 3) if oldest else None,
            "duplicate_runs": int(reclaims or 0),
            "late_results": int(late or 0),
        }

    def fold_events(self, until: float | None = None, again: bool = False) -> None:
        """PostgreSQL: its events received until ``until`` (``FOLD_MARGIN`` ago) counted into
        the tallies once for all, so that ``stats`` counts only the newer ones (schema version
        11). ``again``: counted from the first event (a bench that stores a year of events
        after the fact). The worker calls it every minute. SQLite tallies every event as it is
        written (version 9)."""
        if not self.is_postgres:
            return
        until = time.time() - FOLD_MARGIN if until is None else until
        with self.engine.begin() as conn:
            fold_events(conn, int(until * 1000), again)

    def list_deliveries(self, status: str | None = None, plugin: str | None = None, code: str | None = None,
                        since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries, newest event first, in the same milliseconds at any size of store."""
        plugin, code = storable(plugin), storable(code)  # as the columns hold text (a NUL, say)
        listed = deliveries
        if status in _SQLITE_LISTED and not self.is_postgres:
            listed = text(_SQLITE_LISTED[status]).columns(*deliveries.c).subquery("listed")
        query = (select(listed.c.id, listed.c.event_id, listed.c.plugin, listed.c.status, listed.c.attempts,
                        listed.c.next_attempt_at, listed.c.last_error, listed.c.updated_at,
                        events.c.trigger_code, events.c.ref, events.c.label, events.c.received_at)
                 .join(events, events.c.id == listed.c.event_id))
        if status and listed is deliveries:
            query = query.where(DEAD_ONLY if status == DEAD else deliveries.c.status == status)
        if plugin:
            # An expression, which no index answers: through ix_deliveries_due, SQLite sorted
            # every delivery of the plugin (1.4 s at 1,000,000) instead of reading them in order.
            query = query.where(listed.c.plugin.concat("") == plugin)
        if code:
            query = query.where(events.c.trigger_code == code)
        if since is not None:
            query = query.where(events.c.received_at >= since, listed.c.event_id >= earliest_event_id(since))
        # By event id, which begins with the millisecond the event was received: the order of
        # uq_deliveries_event_plugin and ix_deliveries_dead, read from their end.
        query = query.order_by(listed.c.event_id.desc(), listed.c.plugin.desc()).limit(limit)
        with self._readonly() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def show(self, event_id: str) -> dict[str, Any] | None:
        event_id = storable(event_id)  # an id from a URL may hold anything
        with self._readonly() as conn:
            row = conn.execute(select(events).where(events.c.id == event_id)).first()
            if row is None:
                return None
            data = dict(row._mapping)
            raw = data.pop("raw_body")
            data["raw_body_size"] = len(raw) if raw is not None else None
            data["payload"] = payloads.parsed(data["payload"])
            data["deliveries"] = []
            for d in conn.execute(select(deliveries).where(deliveries.c.event_id == event_id)
                                  .order_by(deliveries.c.id)):
                item = dict(d._mapping)
                item.pop("lease_token")
                item["attempts_log"] = [dict(a._mapping) for a in conn.execute(
                    select(attempts).where(attempts.c.delivery_id == d.id).order_by(attempts.c.id))]
                data["deliveries"].append(item)
        return data

    def object_events(self, element: str, object_id: str, source: str | None = None,
                      limit: int = 1000) -> list[dict[str, Any]]:
        """Every event of one object (its type and Dolibarr id), oldest first."""
        query = (select(events.c.id, events.c.source, events.c.trigger_code, events.c.label, events.c.ref,
                        events.c.status, events.c.duplicate_of, events.c.received_at)
                 .where(events.c.element == storable(element), events.c.object_id == storable(str(object_id))))
        if source:
            query = query.where(events.c.source == storable(source))
        with self._readonly() as conn:
            return [dict(row._mapping) for row in conn.execute(query.order_by(events.c.received_at).limit(limit))]

    # -- credentials ------------------------------------------------------------
    def scrub_rules_in_use(self) -> set[str | None]:
        """The scrub rules events were stored under (None: before credentials were masked).
        A loose index scan: one index look-up per distinct rule, whatever the store's size."""
        with self._readonly() as conn:
            rules: set[str | None] = set(conn.execute(_DISTINCT_RULES).scalars())
            if conn.execute(select(events.c.id).where(events.c.scrub_rule.is_(None)).limit(1)).first():
                rules.add(None)
        return rules

    def _stale(self, expected: dict[str, str], default: str):
        """Events whose rule is not the one expected for their source (``default`` for a source
        no longer configured); each term reads a range of ix_events_scrub_rule, so a store
        whose events all follow the current rule answers at once."""
        terms = []
        for rule in self.scrub_rules_in_use():
            if rule is None:
                terms.append(events.c.scrub_rule.is_(None))
                continue
            expecting = [s for s, fp in expected.items() if fp == rule]
            others = [s for s, fp in expected.items() if fp != rule]
            if rule == default:
                if others:
                    terms.append(and_(events.c.scrub_rule == rule, events.c.source.in_(others)))
            else:
                terms.append(and_(events.c.scrub_rule == rule, events.c.source.not_in(expecting))
                             if expecting else events.c.scrub_rule == rule)
        return or_(*terms) if terms else None

    def count_stale(self, expected: dict[str, str], default: str) -> int:
        """How many events were scrubbed under another rule than their source's (or none)."""
        stale = self._stale(expected, default)
        if stale is None:
            return 0
        with self._readonly() as conn:
            return conn.execute(select(func.count()).select_from(events).where(stale)).scalar() or 0

    def rescrub(self, scrubber_for: Callable[[str], Any], expected: dict[str, str], default: str,
                batch: int = 200) -> dict[str, int]:
        """Scrub again, under today's rule, every event stored under another rule (or none):
        payloads and quarantined bodies rewritten with their credentials masked, labels given
        to events stored before labels existed. Returns what was read and what was changed."""
        from ..labels import object_label

        done = {"read": 0, "changed": 0}
        stale = self._stale(expected, default)
        while stale is not None:
            with self._write() as conn:
                rows = conn.execute(select(events.c.id, events.c.source, events.c.trigger_code, events.c.payload,
                                           events.c.raw_body, events.c.label).where(stale).limit(batch)).all()
                for row in rows:
                    scrubber = scrubber_for(row.source)
                    values: dict[str, Any] = {"scrub_rule": scrubber.fingerprint}
                    if row.payload:
                        stored = payloads.parsed(row.payload)
                        scrubbed = scrubber.scrub(stored)
                        if isinstance(scrubbed.get("object"), dict) and not row.label:
                            scrubbed["label"] = object_label(row.trigger_code, scrubbed["object"])
                            values["label"] = scrubbed["label"]
                        if scrubbed != stored:
                            values["payload"] = self._stored_payload(fastjson.dumps(scrubbed))
                    if row.raw_body:
                        raw = scrubber.scrub_raw(row.raw_body)
                        if raw != row.raw_body:
                            values["raw_body"] = raw
                    done["changed"] += "payload" in values or "raw_body" in values
                    conn.execute(update(events).where(events.c.id == row.id).values(**values))
            done["read"] += len(rows)
            if len(rows) < batch:
                break
        return done

    def replay(self, event_id: str | None = None, statuses: Iterable[str] = (), since: float | None = None,
               plugin: str | None = None, handlers: Callable[[str], list[str]] | None = None,
               chunk: int = REPLAY_CHUNK) -> int:
        """Make deliveries due now with a fresh attempt budget. With an event id and a plugin that
        never had a delivery for it (installed later), the delivery is created.

        Without an event id, a range of ``chunk`` delivery ids per transaction, as ``purge``
        goes: the replay of a day of dead deliveries does not hold SQLite's writers' turn,
        and the worker starts on the first range while the next is made due."""
        now = time.time()
        statuses = list(statuses)
        event_id, plugin = storable(event_id), storable(plugin)

        def chosen_by(status, plugin_column) -> list[Any]:
            found = [deliveries.c.status != RUNNING]
            if statuses:
                found.append(status.in_(statuses))
            if plugin:
                found.append(plugin_column == plugin)
            if since is not None:  # looked up delivery by delivery, not a list of every event since
                found.append(select(literal(1)).where(events.c.id == deliveries.c.event_id,
                                                      events.c.received_at >= since).exists())
            return found

        # For the ranges, expressions that no index answers, so that each range is read in the
        # table's order: through ix_deliveries_status or ix_deliveries_due, SQLite would read
        # every delivery of the state or the plugin at each range.
        chosen = chosen_by(deliveries.c.status.concat(""), deliveries.c.plugin.concat(""))
        if event_id:  # its few deliveries, through the unique (event_id, plugin) index
            ranges: Iterable[list[Any]] = [[deliveries.c.event_id == event_id]]
        else:
            ranges = self._replay_ranges(chosen_by(deliveries.c.status, deliveries.c.plugin), chunk)
        count = 0
        for where in ranges:
            with self._write() as conn:
                changed = conn.execute(update(deliveries).where(*where, *chosen).values(
                    status=PENDING, attempts=0, next_attempt_at=now, last_error=None, updated_at=now)).rowcount
                if event_id and plugin and not changed:
                    changed = self._add_delivery(conn, event_id, plugin, now)
                if changed:
                    self._notify(conn)
            if changed:
                self._wake()
            count += changed
        return count

    def _replay_ranges(self, indexed: list[Any], chunk: int) -> Iterable[list[Any]]:
        """What each transaction of a replay without an event id makes due: the deliveries
        ``indexed`` chooses, found through the indexes when they fit in one chunk (the few
        failures of a store of millions), else every range of ``chunk`` delivery ids."""
        with self._readonly() as conn:
            few = list(conn.execute(select(deliveries.c.id).where(*indexed).limit(chunk + 1)).scalars())
            if len(few) <= chunk:
                return [[deliveries.c.id.in_(few)]] if few else []
            first, last = conn.execute(select(func.min(deliveries.c.id), func.max(deliveries.c.id))).one()
        return ([deliveries.c.id >= low, deliveries.c.id < low + chunk] for low in range(first, last + 1, chunk))

    def _add_delivery(self, conn, event_id: str, plugin: str, now: float) -> int:
        """The delivery of an accepted event for a plugin that has none (installed after it
        came): 1 when created."""
        exists = conn.execute(select(events.c.id).where(events.c.id == event_id, events.c.status == ACCEPTED)).scalar()
        has = conn.execute(select(deliveries.c.id).where(deliveries.c.event_id == event_id,
                                                         deliveries.c.plugin == plugin)).scalar()
        if exists and not has:
            conn.execute(insert(deliveries).values(**self._new_delivery(event_id, plugin, now)))
            return 1
        return 0

    def purge(self, older_than: float, include_unfinished: bool = False, chunk: int = PURGE_CHUNK) -> int:
        """Delete events older than ``older_than`` seconds whose deliveries are all delivered
        (or, with ``include_unfinished``, whatever their state), oldest first. Returns the
        number of events.

        A chunk of events per transaction, the next chunk read from where the last ended:
        the requests waiting for SQLite's writers' turn get it between two chunks, however
        large the backlog (the first purge after retention was shortened, or after the
        worker was stopped for days), and no list of every old event is held."""
        cutoff = time.time() - older_than
        purged, after = 0, None
        while True:
            with self._write() as conn:
                rows = conn.execute(_purgeable(cutoff, include_unfinished, after).limit(chunk)).all()
                if rows:
                    doomed_events = [row.id for row in rows]
                    doomed = select(deliveries.c.id).where(deliveries.c.event_id.in_(doomed_events))
                    conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(doomed)))
                    conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(doomed_events)))
                    conn.execute(delete(events).where(events.c.id.in_(doomed_events)))
            purged += len(rows)
            if len(rows) < chunk:
                return purged
            after = (rows[-1].received_at, rows[-1].id)


def _purgeable(cutoff: float, include_unfinished: bool, after: tuple[float, str] | None):
    """The events ``purge`` deletes, oldest first, from after the last one it deleted
    (``after``: its receipt time and id) on, through ``ix_events_received``."""
    old = select(events.c.id, events.c.received_at).where(events.c.received_at < cutoff)
    if after is not None:
        received, event_id = after
        old = old.where(events.c.received_at >= received,
                        or_(events.c.received_at > received, events.c.id > event_id))
    if not include_unfinished:
        # Looked up event by event in the unique (event_id, plugin) index: the deliveries not
        # delivered yet may be many (dead ones, a plugin stopped), and are not all read for each chunk.
        unfinished = select(literal(1)).where(deliveries.c.event_id == events.c.id, deliveries.c.status != DELIVERED)
        old = old.where(~unfinished.exists(), events.c.status != QUARANTINED)
    return old.order_by(events.c.received_at, events.c.id)
