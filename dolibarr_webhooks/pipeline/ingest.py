"""Ingest: an event goes into the store with one delivery per plugin that handles it (a body
that does not parse is quarantined instead); ``deliver.py``'s worker runs the deliveries
later. ``Service`` holds the settings, plugins, store and metrics of one app: the web views
and the commands reach the pipeline through it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from ..credentials import Scrubber, scrubber_for
from ..events import Event
from ..ids import new_event_id
from ..metrics import Metrics
from ..plugins import Plugins
from ..settings import Settings, Source
from ..store import DATA, TIMEOUT, UNAVAILABLE, IngestResult, Store, StoreError, sqlite_path
from ..version import __version__
from .deliver import Worker
from .parse import MissingTriggerCode, ParseError, body_sha256, event_from_body, is_empty_body

logger = logging.getLogger(__name__)


def quarantine_advice(raw: bytes, event_id: str) -> str:
    """What to do about a quarantined body, for the log and the answer. An empty one is what
    Dolibarr posts when it cannot encode the object as JSON: there is nothing to parse again."""
    if is_empty_body(raw):
        return ("Dolibarr posts an empty body when it cannot encode the object as JSON (text that is not valid "
                "UTF-8): nothing to re-process; look at the object in Dolibarr")
    return f"the body is kept: fix, then run 'dolibarr-webhooks reprocess {event_id}'"


@dataclass
class Service:
    settings: Settings
    plugins: Plugins
    store: Store
    metrics: Metrics
    started_at: float = field(default_factory=time.time)

    @property
    def sources(self) -> dict[str, Source]:
        return self.settings.sources

    def event_from_body(self, raw: bytes, source: Source, test: bool = False) -> Event:
        return event_from_body(raw, source=source.name, dolibarr_url=source.dolibarr_url or None,
                               scrub_keys=source.scrub_keys, test=test)

    def scrubber(self, source_name: str) -> Scrubber:
        return scrubber_for(self.sources.get(source_name))

    def ingest(self, event: Event, remote_addr: str | None = None, deadline: float | None = None) -> IngestResult:
        """Store the event with one delivery per plugin that handles it; the worker does the rest.
        ``deadline``: the ``time.monotonic()`` instant after which nothing may be stored."""
        try:
            result = self.store.ingest(event, self.plugins.handlers_for(event.trigger_code),
                                       dedup_window=self.settings["DEDUP_WINDOW"], remote_addr=remote_addr,
                                       deadline=deadline, scrub_rule=self.scrubber(event.source).fingerprint)
        except StoreError as exc:
            self._store_failed("ingest", f"{event.trigger_code} from source {event.source}", exc)
            raise
        self.metrics.event(event.trigger_code, result.status)
        return result

    def _store_failed(self, operation: str, what: str, exc: StoreError) -> None:
        self.metrics.store_error(operation, exc.kind)
        meaning = {UNAVAILABLE: "the store is unavailable", TIMEOUT: "the request deadline passed",
                   DATA: "the store refused its data"}[exc.kind]
        logger.error("could not %s %s: %s (%s)", operation, what, meaning, exc)

    def quarantine(self, raw: bytes, source: Source, error: str, remote_addr: str | None = None,
                   deadline: float | None = None) -> str:
        event_id = new_event_id()
        # A body that does not parse still has its credentials masked where they can be found.
        kept = self.scrubber(source.name).scrub_raw(raw)
        try:
            self.store.quarantine(event_id, kept, source.name, error, body_sha256(raw), time.time(), remote_addr,
                                  deadline=deadline)
        except StoreError as exc:
            self._store_failed("quarantine", f"a body of {len(raw)} bytes from source {source.name}", exc)
            raise
        self.metrics.event("", "quarantined")
        logger.warning("quarantined an authenticated body from source %s that cannot become an event (%s, %d bytes): "
                       "event %s; %s", source.name, error, len(raw), event_id, quarantine_advice(raw, event_id))
        return event_id

    def reprocess(self, event_id: str | None = None) -> list[tuple[str, str]]:
        """Parse quarantined bodies again (after a fix); those that parse now are ingested."""
        results = []
        for row in self.store.quarantined(event_id):
            source = self.sources.get(row["source"]) or Source(name=row["source"])
            try:
                parsed = self.event_from_body(row["raw_body"] or b"", source)
            except (ParseError, MissingTriggerCode) as exc:
                results.append((row["id"], f"still unparseable: {exc}"))
                continue
            event = Event(**{**parsed.__dict__, "id": row["id"],
                             "received_at": datetime.fromtimestamp(row["received_at"], timezone.utc)})
            count = self.store.accept_quarantined(event, self.plugins.handlers_for(event.trigger_code),
                                                  scrub_rule=self.scrubber(source.name).fingerprint)
            results.append((row["id"], f"accepted as {event.trigger_code}, {count} deliveries"))
        return results

    def replay(self, event_id: str | None = None, statuses: Iterable[str] = (), since: float | None = None,
               plugin: str | None = None) -> int:
        """``Store.replay`` (the ``replay`` command, the dashboard's buttons), for a plugin this
        service has: a delivery made due, or created for an event, under a name no plugin has
        (a typo) would wait for ever, its age raising the queue's alerts."""
        if plugin is not None and plugin not in self.plugins.info:
            handlers = ", ".join(sorted(self.plugins.handlers())) or "none"
            raise ValueError(f"no plugin named {plugin!r} (the plugins that handle events: {handlers})")
        return self.store.replay(event_id=event_id, statuses=statuses, since=since, plugin=plugin)

    def make_worker(self, name: str | None = None, store: Store | None = None) -> Worker:
        worker = Worker(store=store or self.store, plugins=self.plugins, settings=self.settings,
                        metrics=self.metrics)
        if name:
            worker.name = name
        return worker

    def delivery_worker(self, name: str | None = None) -> Worker:
        """The worker of a process that delivers: the ``worker`` command, and ``serve``'s thread in
        each web process. Its claims and outcomes go through a store of its own
        (``Store.for_worker``); the events' commits stay the service's, durable, and wake it
        too. An in-memory database has one store only."""
        url = self.settings["DATABASE_URL"]
        if not self.store.is_postgres and not sqlite_path(url):
            return self.make_worker(name)
        worker = self.make_worker(name, store=Store.for_worker(url, self.settings["REQUEST_DEADLINE"]))
        worker.owns_store = True
        self.store.add_listener(worker.committed)
        return worker

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "service": "dolibarr-webhooks", "version": __version__,
                "uptime": round(time.time() - self.started_at, 3),
                "timestamp": datetime.now(timezone.utc).isoformat()}
