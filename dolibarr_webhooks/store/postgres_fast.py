"""The PostgreSQL worker's claims and outcomes on the driver's cursor, inside the store's
transaction: SQLAlchemy's ``Connection.execute`` cost the worker more CPU than building the
parameters and reading the rows (0.80 against 0.63 ms a delivery, issue #15), as it did on
SQLite (``sqlite_fast``; both run the statements of ``compiled``). A driver error is raised as
SQLAlchemy raises it (``OperationalError``, ``IntegrityError``...), so that
``failures.classify_error`` tells an outage from bad data. A connection the driver lost is
not lent again: the transaction's end finds it broken and the pool drops it. ``pipeline``
sends statements that need nothing from each other's answers in one round trip.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

from .compiled import compiled_once

if TYPE_CHECKING:  # psycopg is imported with a PostgreSQL store only, as SQLAlchemy imports its driver
    import psycopg


def execute(conn: Connection, statement: ClauseElement, params: dict[str, Any] | list[dict[str, Any]],
            keys: tuple[str, ...] | None = None) -> psycopg.Cursor:
    """Run ``statement`` (kept alive by the caller: compiled once, by identity) with ``params``,
    or once for each of a list of them (psycopg pipelines those: one round trip); ``keys``:
    the columns an INSERT or an UPDATE sets."""
    sql, _names, own = compiled_once(conn.dialect, statement, keys)
    cursor = conn.connection.driver_connection.cursor()
    with _raised_as_sqlalchemy(conn, sql):
        if isinstance(params, list):
            cursor.executemany(sql, [dict(own, **row) for row in params])
        else:
            cursor.execute(sql, dict(own, **params))
    return cursor


@contextlib.contextmanager
def pipeline(conn: Connection) -> Iterator[Callable[[], None]]:
    """psycopg's pipeline mode on the transaction's connection: the statements executed in the
    block are sent without waiting for each answer. It gives ``sync()``, which sends what is
    queued and reads every answer (one round trip); the block's end does the same. A driver
    error met then, the statement's own or the connection's, is raised as SQLAlchemy raises it."""
    with _raised_as_sqlalchemy(conn, "(the worker's pipelined statements)"), \
            conn.connection.driver_connection.pipeline() as pipe:
        yield pipe.sync


@contextlib.contextmanager
def _raised_as_sqlalchemy(conn: Connection, sql: str) -> Iterator[None]:
    """psycopg's errors in the block raised as SQLAlchemy's (``DBAPIError.instance``)."""
    driver_error = conn.dialect.dbapi.Error  # psycopg's
    try:
        yield
    except driver_error as exc:
        raise DBAPIError.instance(sql, None, exc, driver_error, hide_parameters=True, dialect=conn.dialect) from exc
