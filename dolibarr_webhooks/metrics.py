"""Prometheus metrics, correct with several gunicorn workers and a separate worker process.

prometheus_client decides when it is first imported whether samples live in this
process's memory or in files of ``PROMETHEUS_MULTIPROC_DIR``. contrib/gunicorn.conf.py
sets that variable in the gunicorn master, before any worker imports this module,
and the systemd units give the ``worker`` service the same folder, so the deliveries
it records show up in the ``/metrics`` of any web worker. Queue depth and the oldest
pending age are read from the store at scrape time (``queue_gauges``, through indexes
over the waiting rows only), so they are right whatever process answers.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily

from .metrics_folder import MULTIPROC_ENV, made

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def multiprocess_dir() -> str | None:
    """The shared samples folder, if this process really writes its samples there."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if getattr(values.ValueClass, "__name__", "") != "MmapedValue":
        logger.warning("%s is set but prometheus_client was imported before it was: /metrics shows this "
                       "process only. Set it in the environment of the service (contrib/gunicorn.conf.py "
                       "and the systemd units do).", MULTIPROC_ENV)
        return None
    return made(path)  # the worker service may start before gunicorn has made the folder


class Metrics:
    """The metrics of one app; the worker records delivery outcomes through it too."""

    def __init__(self) -> None:
        self.multiprocess_dir = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dolibarr_webhooks_requests",
                                "Requests by answer status and reason (accepted, duplicate, quarantined, auth, ip, "
                                "parse, no_trigger_code, request_entity_too_large, not_found, "
                                "method_not_allowed, too_many_requests, store, store_timeout, store_data)",
                                ["status", "reason"], registry=self.registry)
        self.events = Counter("dolibarr_webhooks_events", "Events received by trigger code and result",
                              ["code", "result"], registry=self.registry)
        self.deliveries = Counter("dolibarr_webhooks_deliveries",
                                  "Finished delivery attempts by plugin and outcome "
                                  "(delivered, failed, dead, timeout)",
                                  ["plugin", "outcome"], registry=self.registry)
        self.handler_seconds = Histogram("dolibarr_webhooks_handler_seconds", "Time a plugin took for one event",
                                         ["plugin"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.store_errors = Counter("dolibarr_webhooks_store_errors",
                                    "Store operations of the request path that failed, by operation (ingest, "
                                    "quarantine) and kind: unavailable (an outage), timeout (the request deadline "
                                    "passed) or data (the store refused the event's data)",
                                    ["operation", "kind"], registry=self.registry)
        self.ack_seconds = Histogram("dolibarr_webhooks_ack_seconds",
                                     "Time from the start of a webhook request to its acknowledgement",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.notices_lost = Counter("dolibarr_webhooks_notices_lost",
                                    "Delivery outcomes and alerts a plugin failed to take after every retry",
                                    ["plugin", "hook"], registry=self.registry)
        # The request path's counters, by label values: prometheus_client's ``labels`` builds
        # and checks the values and takes a lock at each call (4 % of a request's Python time,
        # bench/HISTORY.rst, issue #15). Its children are never removed, so they can be kept;
        # there are as many as prometheus_client keeps.
        self._requests = functools.lru_cache(maxsize=None)(self.requests.labels)
        self._events = functools.lru_cache(maxsize=None)(self.events.labels)

    def request(self, status: int, reason: str) -> None:
        self._requests(status, reason or "-").inc()

    def event(self, code: str, result: str) -> None:
        self._events(code or "-", result).inc()

    def delivery_finished(self, plugin: str, outcome: str, seconds: float) -> None:
        self.deliveries.labels(plugin, outcome).inc()
        self.handler_seconds.labels(plugin).observe(seconds)

    def notice_lost(self, plugin: str, hook: str) -> None:
        self.notices_lost.labels(plugin, hook).inc()

    def store_error(self, operation: str, kind: str) -> None:
        self.store_errors.labels(operation, kind).inc()

    def acknowledged(self, started: float) -> None:
        self.ack_seconds.observe(time.perf_counter() - started)

    def exposition(self, store: Any) -> bytes:
        if self.multiprocess_dir:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
            output = generate_latest(registry)
        else:
            output = generate_latest(self.registry)
        queue = CollectorRegistry()
        queue.register(_QueueCollector(store))
        return output + generate_latest(queue)


class _QueueCollector:
    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self):
        from sqlalchemy.exc import SQLAlchemyError

        up = GaugeMetricFamily("dolibarr_webhooks_store_up", "Whether the store answered this scrape")
        try:
            stats = self.store.queue_gauges()
        except SQLAlchemyError as exc:
            logger.warning("metrics: the store does not answer: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("dolibarr_webhooks_queue_depth",
                                  "Deliveries not delivered yet, by status (pending, running, failed, dead)",
                                  labels=["status"])
        for status, count in stats["deliveries"].items():
            depth.add_metric([status], count)
        yield depth
        yield GaugeMetricFamily("dolibarr_webhooks_oldest_pending_seconds",
                                "Age of the oldest delivery not yet done (0 when none)",
                                value=stats["oldest_pending_age"] or 0)
        yield GaugeMetricFamily("dolibarr_webhooks_quarantined_events",
                                "Authenticated bodies kept because they could not be parsed",
                                value=stats["quarantined"])
