"""The request deadline: one budget for a webhook request, counted from the moment the
proxy passed it on, so that the answer always reaches the proxy, and Dolibarr, before they
give up. No Flask here.

Behind nginx a request may wait for a free gunicorn worker (in the listen backlog) before
the application sees it, and that wait counts against nginx's proxy_read_timeout as much
as the store's does: nginx stamps each request (``X-Request-Start: t=$msec``, contrib/nginx)
and the wait is taken off the budget. A request that waited longer than the whole budget
is answered 503 without touching the store: nginx has answered for it already, or is about to.
"""

from __future__ import annotations

import math
import time

REQUEST_START_HEADER = "X-Request-Start"


def queued_for(header: str | None, now: float) -> float:
    """Seconds since the proxy stamped the request (nginx's ``t=$msec``: seconds, with
    milliseconds); 0 when there is no stamp, a malformed one, or one in the future."""
    if not header:
        return 0.0
    value = header.strip()
    if value.startswith("t="):
        value = value[2:]
    try:
        stamp = float(value)
    except ValueError:
        return 0.0
    if not math.isfinite(stamp):
        return 0.0
    return max(0.0, now - stamp)


def request_deadline(budget: float, started: float, request_start: str | None = None) -> float:
    """The ``time.monotonic()`` instant by which a request's event must be stored.
    ``started``: ``time.perf_counter()`` when the application got the request;
    ``request_start``: the proxy's stamp, from a trusted proxy only."""
    spent = time.perf_counter() - started + queued_for(request_start, time.time())
    return time.monotonic() + budget - spent
