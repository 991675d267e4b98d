"""The SQLite ingest and the worker's claims and outcomes on the driver: their statements on
the driver's cursor, their transactions on driver connections kept by the store (``Drivers``).

Going through ``Connection.execute`` costs more CPU than the statements themselves, and a
pool checkout, SQLAlchemy's transaction and its ``begin`` listener cost about as much again
(the figures are in bench/HISTORY.rst, issue #15).
Each statement is compiled once by SQLAlchemy for the connection's dialect (``compiled``),
so the SQL and its parameters stay those of the Core statements in ``store``; the writers'
turn, the busy timeout and the group commit stay the store's. A driver error is raised as
SQLAlchemy raises it (``IntegrityError``, ``OperationalError``...), so
``store.classify_error`` tells a data error from an outage as before, and a file opened
read-only marks the engine stale as SQLAlchemy's ``handle_error`` listener does.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any, Iterable, Sequence

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

from .compiled import compiled_once
from .engine import mark_if_stale, set_busy_timeout


class Driver:
    """One of the engine's connections, held outside SQLAlchemy's pool (the group commit's:
    store.batch), with transactions begun and ended on the driver. ``stale`` once an error
    said the file was opened read-only: then the connection must be closed, not reused."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        try:  # through the engine's connect listener: WAL, synchronous
            self._pooled = engine.raw_connection()
        except sqlite3.Error as exc:  # the pool does not wrap a failed connect as a query's errors are
            mark_if_stale(engine, exc)
            raise DBAPIError.instance("connect", (), exc, sqlite3.Error, hide_parameters=True,
                                      dialect=engine.dialect) from exc
        self.connection: sqlite3.Connection = self._pooled.driver_connection
        self.stale = False

    def begin(self, deadline: float | None) -> None:
        """``BEGIN IMMEDIATE`` (the write lock up front), waiting for another program's lock
        until ``deadline`` only."""
        set_busy_timeout(self.connection, self._pooled.info, deadline)
        _run(self, "BEGIN IMMEDIATE", lambda cursor: cursor.execute("BEGIN IMMEDIATE"), ())

    def commit(self) -> None:
        _run(self, "COMMIT", lambda cursor: cursor.execute("COMMIT"), ())

    def rollback(self) -> None:
        """End a transaction left open (none open: nothing to do)."""
        if self.connection.in_transaction:
            _run(self, "ROLLBACK", lambda cursor: cursor.execute("ROLLBACK"), ())

    def close(self) -> None:
        """Close the file's connection (a stale one must not go back to the pool)."""
        self._pooled.invalidate()


class Drivers:
    """The driver connections of one store in one process, each used by one transaction at a
    time (the group commit's leader, the worker's claim, a lane recording its outcome) and
    kept between them: as many as ever ran at once, a few."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._idle: list[Driver] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def take(self) -> Driver:
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()  # the parent's, after a fork: never used, nor closed, here
            if self._idle:
                return self._idle.pop()
        return Driver(self.engine)

    def give_back(self, driver: Driver) -> None:
        """After a transaction: none is left open. A connection that met a file opened read-only
        is closed, and the idle ones with it (they opened the same file): the next transaction
        opens it anew (the store's ``_reopen_if_stale`` does the same for SQLAlchemy's pool)."""
        try:
            if not driver.stale:
                driver.rollback()
        except Exception:
            driver.stale = True
        if not driver.stale:
            with self._lock:
                if self._pid == os.getpid():
                    self._idle.append(driver)
            return
        driver.close()
        self.close()

    def close(self) -> None:
        """Close the idle connections (the store is disposed of, or its file went stale)."""
        with self._lock:
            idle, self._idle = self._idle, []
            mine = self._pid == os.getpid()
        for driver in idle if mine else ():
            driver.close()


def execute(conn: Connection | Driver, statement: ClauseElement, params: dict[str, Any],
            keys: Sequence[str] | None = None) -> sqlite3.Cursor:
    """Run ``statement`` (kept alive by the caller: compiled once, by identity) with
    ``params`` on a ``Driver`` or inside a SQLAlchemy connection's transaction; ``keys``:
    the columns an INSERT sets."""
    sql, names, own = compiled_once(conn.dialect, statement, keys)
    values = [params[name] if name in params else own[name] for name in names]
    return _run(conn, sql, lambda cursor: cursor.execute(sql, values), values)


def executemany(conn: Connection | Driver, statement: ClauseElement, rows: Iterable[dict[str, Any]],
                keys: Sequence[str]) -> sqlite3.Cursor:
    sql, names, own = compiled_once(conn.dialect, statement, keys)
    values = [[row[name] if name in row else own[name] for name in names] for row in rows]
    return _run(conn, sql, lambda cursor: cursor.executemany(sql, values), values)


def _run(conn: Connection | Driver, sql: str, call, values) -> sqlite3.Cursor:
    driver = conn.connection if isinstance(conn, Driver) else conn.connection.driver_connection
    cursor = driver.cursor()
    try:
        call(cursor)
    except sqlite3.Error as exc:
        if mark_if_stale(conn.engine, exc) and isinstance(conn, Driver):  # what make_engine's handle_error does
            conn.stale = True
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error, hide_parameters=True,
                                  dialect=conn.dialect) from exc
    return cursor
