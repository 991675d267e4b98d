"""What ``/metrics`` reads from the store at each scrape: the deliveries not done yet, by
status, the age of the oldest, and the quarantined bodies.

Each count reads an index over the rows that wait only (``ix_deliveries_status``; the
quarantined events through ``ix_events_status``, on SQLite ``ix_events_quarantined``), never
the delivered ones: a scrape every 15 s used to run
``Store.stats()``, which counts every event, delivery and attempt, and grows with the store
(bench/growth.py; figures in bench/HISTORY.rst). Delivered deliveries are counted by
``dolibarr_webhooks_deliveries_total`` as they happen.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from .schema import DEAD, FAILED, PENDING, QUARANTINED_ONLY, RUNNING, deliveries, events

WAITING = (PENDING, RUNNING, FAILED, DEAD)
_NOT_DONE = (PENDING, RUNNING, FAILED)

_BY_STATUS = (select(deliveries.c.status, func.count()).where(deliveries.c.status.in_(WAITING))
              .group_by(deliveries.c.status))
_OLDEST = select(func.min(deliveries.c.created_at)).where(deliveries.c.status.in_(_NOT_DONE))
_QUARANTINED = select(func.count()).select_from(events).where(QUARANTINED_ONLY)


def queue_gauges(store: Any) -> dict[str, Any]:
    """``{"deliveries": {status: count}, "oldest_pending_age": seconds or None, "quarantined": n}``."""
    now = time.time()
    with store._readonly() as conn:
        counts = dict(conn.execute(_BY_STATUS).all())
        oldest = conn.execute(_OLDEST).scalar()
        quarantined = conn.execute(_QUARANTINED).scalar()
    return {"deliveries": {status: counts.get(status, 0) for status in WAITING},
            "oldest_pending_age": round(now - oldest, 3) if oldest else None,
            "quarantined": quarantined or 0}
