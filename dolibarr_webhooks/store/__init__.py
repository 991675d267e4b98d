"""The durable store: events, one delivery per plugin and event, and every attempt.

``schema`` (tables, states, migrations), ``engine`` (connections and their pragmas),
``writers`` (SQLite's writers' queue), ``group_commit`` (SQLite's shared fsync), ``batch``
(the ingest's group commit: the requests waiting at once in one transaction), ``payloads``
(an event's JSON as the column keeps it: lz4 on SQLite), ``queue`` (``Store``: ingest,
claim, finish),
``inspect`` (the operators' side: listings, statistics, replay, purge), ``failures``
(``StoreError`` and its kinds). No Flask here: the worker runs without it.
"""

from __future__ import annotations

from ..database_url import libpq_url, normalise_url
from .engine import driver_connect_args, refuses_writes, sqlite_folder_problem, sqlite_path, with_database
from .failures import (DATA, STORE_ERROR_KINDS, STORE_ERRORS, TIMEOUT, UNAVAILABLE, DeadlinePassed, StoreError,
                       classify_error, error_line, unavailable)
from .queue import Claim, IngestResult, Store
from .schema import (ACCEPTED, DEAD, DELIVERED, DELIVERY_STATES, DUPLICATE, FAILED, NOTIFY_CHANNEL, PENDING,
                     QUARANTINED, RUNNING, SCHEMA_VERSION, attempts, deliveries, events, schema_problem)

__all__ = ["Store", "Claim", "IngestResult", "StoreError", "STORE_ERRORS", "DeadlinePassed", "classify_error",
           "error_line", "unavailable",
           "driver_connect_args", "libpq_url", "normalise_url", "refuses_writes", "sqlite_folder_problem",
           "sqlite_path", "with_database",
           "DATA", "TIMEOUT", "UNAVAILABLE", "STORE_ERROR_KINDS", "SCHEMA_VERSION", "NOTIFY_CHANNEL",
           "PENDING", "RUNNING", "DELIVERED", "FAILED", "DEAD", "DELIVERY_STATES", "ACCEPTED", "DUPLICATE",
           "QUARANTINED", "schema_problem", "events", "deliveries", "attempts"]
