"""The PostgreSQL worker's claims and outcomes on the driver's cursor, inside the store's
transaction: SQLAlchemy's ``Connection.execute`` cost the worker more CPU than building the
parameters and reading the rows (0.80 against 0.63 ms a delivery, issue #15), as it did on
SQLite (``sqlite_fast``; both run the statements of ``compiled``). A driver error is raised as
SQLAlchemy raises it (``OperationalError``, ``IntegrityError``...), so that
``failures.classify_error`` tells an outage from bad data. A connection the driver lost is
not lent again: the transaction's end finds it broken and the pool drops it. ``pipeline``
sends a transaction's statements that need nothing from each other's answers in one round trip.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

from .compiled import compiled_once
from .engine import refuses_writes

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
    """The whole of the transaction's statements in psycopg's pipeline mode, its BEGIN and COMMIT
    included: sent without waiting for each answer. It gives ``sync()``, which sends what is
    queued and reads every answer (one round trip); the block's end sends the COMMIT with the
    rest. The transaction must not have run a statement yet. A driver error met, the
    statement's own or the connection's, is raised as SQLAlchemy raises it, the transaction
    rolled back; SQLAlchemy's commit or rollback then finds nothing left to do.

    psycopg sends its own BEGIN before a transaction's first statement and waits for it, a
    round trip of its own: the connection is in autocommit for the block, which sends BEGIN
    itself, as SQLAlchemy's ``do_ping`` does for its ``SELECT 1``."""
    driver = conn.connection.driver_connection
    driver.autocommit = True  # psycopg's transaction has not begun: SQLAlchemy's begin() sends nothing
    with _raised_as_sqlalchemy(conn, "(the worker's pipelined statements)"):
        try:
            with driver.pipeline() as pipe:
                driver.execute(b"BEGIN")
                yield pipe.sync
                driver.execute(b"COMMIT")
        finally:
            _out_of_autocommit(driver)


def _out_of_autocommit(driver: psycopg.Connection) -> None:
    """Back to psycopg's own transactions, a failed one rolled back first; never back to the
    pool in autocommit, where the store's next transaction would commit statement by statement.
    On a lost connection nothing can be sent: the transaction's end finds it broken, and the
    pool drops it."""
    import psycopg
    from psycopg.pq import TransactionStatus

    try:
        if driver.info.transaction_status != TransactionStatus.IDLE:
            driver.rollback()
        driver.autocommit = False
    except psycopg.Error:
        if not driver.broken and not driver.closed:
            raise


@contextlib.contextmanager
def _raised_as_sqlalchemy(conn: Connection, sql: str) -> Iterator[None]:
    """psycopg's errors in the block raised as SQLAlchemy's (``DBAPIError.instance``). A
    connection to a server that takes no writes is not lent again either (``refuses_writes``):
    SQLAlchemy's own error handling, which would see to it, does not run here."""
    driver_error = conn.dialect.dbapi.Error  # psycopg's
    try:
        yield
    except driver_error as exc:
        if refuses_writes(exc):
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, None, exc, driver_error, hide_parameters=True, dialect=conn.dialect) from exc
