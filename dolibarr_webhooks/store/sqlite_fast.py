"""The SQLite ingest's statements run on the driver's cursor, inside SQLAlchemy's transaction.

Going through ``Connection.execute`` costs more CPU than the statements themselves (the
figures are in bench/README.rst, issue #15).
Each statement is compiled once by SQLAlchemy for the connection's dialect, so the SQL and
its parameters stay those of the Core statements in ``store``; the transaction, the
writers' turn, the busy timeout and the group commit stay ``Store._write``'s. A driver
error is raised as SQLAlchemy raises it (``IntegrityError``, ``OperationalError``...), so
``store.classify_error`` tells a data error from an outage as before, and a file opened
read-only marks the engine stale as SQLAlchemy's ``handle_error`` listener does.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Sequence

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

_compiled: dict[tuple[int, tuple[str, ...] | None, str], tuple[str, tuple[str, ...], dict[str, Any]]] = {}


def _compile(conn: Connection, statement: ClauseElement, keys: Sequence[str] | None):
    """(SQL, parameter names in order, values of the statement's own parameters: LIMIT...)."""
    cache_key = (id(statement), tuple(keys) if keys is not None else None, conn.dialect.name)
    found = _compiled.get(cache_key)
    if found is None:
        compiled = statement.compile(dialect=conn.dialect, column_keys=list(keys) if keys is not None else None)
        own = {name: bind.value for name, bind in compiled.binds.items() if bind.value is not None}
        found = _compiled[cache_key] = (compiled.string, tuple(compiled.positiontup), own)
    return found


def execute(conn: Connection, statement: ClauseElement, params: dict[str, Any],
            keys: Sequence[str] | None = None) -> sqlite3.Cursor:
    """Run ``statement`` (kept alive by the caller: compiled once, by identity) with
    ``params``; ``keys``: the columns an INSERT sets."""
    sql, names, own = _compile(conn, statement, keys)
    values = [params[name] if name in params else own[name] for name in names]
    return _run(conn, sql, lambda cursor: cursor.execute(sql, values), values)


def executemany(conn: Connection, statement: ClauseElement, rows: Iterable[dict[str, Any]],
                keys: Sequence[str]) -> sqlite3.Cursor:
    sql, names, own = _compile(conn, statement, keys)
    values = [[row[name] if name in row else own[name] for name in names] for row in rows]
    return _run(conn, sql, lambda cursor: cursor.executemany(sql, values), values)


def _run(conn: Connection, sql: str, call, values) -> sqlite3.Cursor:
    cursor = conn.connection.driver_connection.cursor()
    try:
        call(cursor)
    except sqlite3.Error as exc:
        from .engine import mark_if_stale

        mark_if_stale(conn.engine, exc)  # what make_engine's handle_error listener does
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error, hide_parameters=True,
                                  dialect=conn.dialect) from exc
    return cursor
