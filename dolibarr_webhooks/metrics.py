"""Prometheus metrics, correct with several gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (contrib/gunicorn.conf.py sets it), each
process writes its samples to that folder and ``/metrics`` adds them up; queue
depth and the oldest pending age are read from the store at scrape time, so
they are right whatever process answers.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The metrics of one app; the worker records delivery outcomes through it too."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("dolibarr_webhooks_requests", "Webhook requests by answer status and reason",
                                ["status", "reason"], registry=self.registry)
        self.events = Counter("dolibarr_webhooks_events", "Events received by trigger code and result",
                              ["code", "result"], registry=self.registry)
        self.deliveries = Counter("dolibarr_webhooks_deliveries", "Finished delivery attempts by plugin and outcome",
                                  ["plugin", "outcome"], registry=self.registry)
        self.handler_seconds = Histogram("dolibarr_webhooks_handler_seconds", "Time a plugin took for one event",
                                         ["plugin"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ack_seconds = Histogram("dolibarr_webhooks_ack_seconds", "Time from request to acknowledgement",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)

    def request(self, status: int, reason: str) -> None:
        self.requests.labels(str(status), reason).inc()

    def event(self, code: str, result: str) -> None:
        self.events.labels(code or "-", result).inc()

    def delivery_finished(self, plugin: str, outcome: str, seconds: float) -> None:
        self.deliveries.labels(plugin, outcome).inc()
        self.handler_seconds.labels(plugin).observe(seconds)

    def acknowledged(self, started: float) -> None:
        self.ack_seconds.observe(time.perf_counter() - started)

    def exposition(self, store: Any) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
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
        stats = self.store.stats()
        depth = GaugeMetricFamily("dolibarr_webhooks_queue_depth", "Deliveries by status", labels=["status"])
        for status, count in stats["deliveries"].items():
            depth.add_metric([status], count)
        yield depth
        yield GaugeMetricFamily("dolibarr_webhooks_oldest_pending_seconds",
                                "Age of the oldest delivery not yet done", value=stats["oldest_pending_age"] or 0)
