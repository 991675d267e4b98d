"""Connections to the store: SQLite's pragmas and transactions, PostgreSQL's
request engine bound by the request deadline."""

from __future__ import annotations

import gc
import math
import os
import select
import time

from sqlalchemy import create_engine, event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

from ..database_url import normalise_url


def driver_connect_args(engine: Engine) -> dict:
    """What psycopg takes to connect where ``engine`` does (``psycopg.connect(**...)``), every
    server of the URL and its options included, as SQLAlchemy's dialect makes them."""
    _args, kwargs = engine.dialect.create_connect_args(engine.url)
    return kwargs


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead: host, port, credentials and query kept
    (a Unix socket's ``?host=`` included)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def sqlite_path(url: str) -> str | None:
    """The absolute path of an SQLite store's file; None for PostgreSQL or an in-memory database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.abspath(parsed.database)


def sqlite_folder_problem(path: str) -> str | None:
    """What keeps an SQLite file from being made at ``path``, as ``check`` and a failed
    migration say it: its folder missing, or not writable by this user; None when neither."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable by this user"
    return None


# The busy timeout of a transaction without a deadline (the worker's, the CLI's).
SQLITE_BUSY_TIMEOUT = 30.0
# SQLite opens a file it may not write read-only, and that connection stays read-only after
# the file is writable again: a pool of them answered 503 until a restart. These errors
# count as a lost connection, so that SQLAlchemy replaces the pool's connections.
_SQLITE_STALE = ("attempt to write a readonly database", "disk I/O error", "unable to open database file",
                 "database or disk is full")


# PostgreSQL's read_only_sql_transaction: a server in recovery (a primary demoted by a
# failover) refuses every write, and LISTEN, with it.
_PG_READ_ONLY = "25006"


def refuses_writes(exc: BaseException) -> bool:
    """Whether a PostgreSQL error says the connection's server takes no writes (a demoted
    primary). Such a connection is replaced, as a lost one is: behind a proxy that keeps each
    connection on the server it was opened to (HAProxy in front of Patroni), those opened to
    the demoted primary during a failover stayed there, and every write was refused until a
    restart."""
    cause = getattr(exc, "orig", None) or exc
    return getattr(cause, "sqlstate", None) == _PG_READ_ONLY


def _replaced_when_refusing_writes(engine: Engine) -> Engine:
    """``engine``'s connections replaced once one meets a server that takes no writes
    (``refuses_writes``): SQLAlchemy then counts it as lost, and the pool opens new ones."""

    @sa_event.listens_for(engine, "handle_error")
    def _on_error(context):
        if refuses_writes(context.original_exception):
            context.is_disconnect = True

    return engine


# A full collection costs milliseconds with the GIL held: during a long fault, when every
# request marks the engine stale again, at most one a second.
_COLLECT_EVERY = 1.0


def reopen_if_stale(engine: Engine) -> None:
    """After an error marked ``engine`` stale (``mark_if_stale``): close every connection of this
    process, idle or not yet returned, so that the next one opens the file anew.

    Closing is not enough when something still holds one of the connection's statements:
    ``sqlite3_close_v2`` then keeps the file open until the statement goes, and the file stays
    read-only for the whole process. The traceback of each failed call holds its frames, and
    their cursors, in a reference cycle (the exception is a local of a frame it holds), which
    only the garbage collector frees: a process that had not collected yet kept answering 503
    after the files were writable again. So a full collection follows the close."""
    if not getattr(engine, "dolibarr_webhooks_stale", False):
        return
    engine.dolibarr_webhooks_stale = False
    engine.dispose()
    now = time.monotonic()
    if now - getattr(engine, "dolibarr_webhooks_collected_at", -_COLLECT_EVERY) >= _COLLECT_EVERY:
        engine.dolibarr_webhooks_collected_at = now
        gc.collect()


def mark_if_stale(engine: Engine, exc: BaseException) -> bool:
    """True (and the engine marked) when an SQLite error means a connection opened read-only.

    The connections of one process share the file's shared-memory index, and one opened
    read-only keeps it read-only for every new connection as long as any connection of the
    process stays open: the store closes them all before its next operation
    (``reopen_if_stale``), not as each is next checked out (a quiet pool kept some for ever)."""
    if str(exc).startswith(_SQLITE_STALE):
        engine.dolibarr_webhooks_stale = True
        return True
    return False


def set_busy_timeout(dbapi_conn, info: dict, deadline: float | None) -> None:
    """Before a transaction: SQLite waits for another program's write lock until ``deadline``
    (a ``time.monotonic()`` instant) only, or SQLITE_BUSY_TIMEOUT without one. ``info``: the
    pool's dict for this connection, which remembers the value set."""
    busy_ms = int(SQLITE_BUSY_TIMEOUT * 1000) if deadline is None else max(
        1, int((deadline - time.monotonic()) * 1000))
    if deadline is not None and busy_ms > 1000:
        # Whole seconds, rounded down: the same value from one request to the next
        # saves a PRAGMA per request, and the wait still ends before the deadline.
        busy_ms -= busy_ms % 1000
    if info.get("busy_ms") != busy_ms:
        dbapi_conn.execute(f"PRAGMA busy_timeout={busy_ms}").close()
        info["busy_ms"] = busy_ms


def make_engine(url: str, synchronous: str = "FULL", ping_every_checkout: bool = True) -> Engine:
    """``synchronous``: SQLite's; ``ping_every_checkout``: PostgreSQL's pool checks each connection
    it lends with a round trip, else with a look at its socket (``closed_by_server``)."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
                               pool_size=8, max_overflow=16)

        @sa_event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, record):
            # We emit BEGIN ourselves (below); pysqlite's own transaction handling would defer it.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
            cursor.close()
            record.info["busy_ms"] = int(SQLITE_BUSY_TIMEOUT * 1000)

        @sa_event.listens_for(engine, "begin")
        def _on_begin(conn):
            options = conn.get_execution_options()
            set_busy_timeout(conn.connection.driver_connection, conn.connection.info, options.get("deadline"))
            # IMMEDIATE takes the write lock up front: a claim or a dedup check cannot race.
            conn.exec_driver_sql("BEGIN" if options.get("readonly") else "BEGIN IMMEDIATE")

        @sa_event.listens_for(engine, "handle_error")
        def _on_error(context):
            if mark_if_stale(context.engine, context.original_exception):
                context.is_disconnect = True

        return engine
    # A server that does not answer fails the request in seconds (503), never holds a worker.
    engine = create_engine(url, pool_pre_ping=ping_every_checkout, pool_size=8, max_overflow=16,
                           connect_args={"connect_timeout": int(os.environ.get("PGCONNECT_TIMEOUT", "5"))})
    _replaced_when_refusing_writes(engine)
    return engine if ping_every_checkout else _looked_at_when_lent(engine)


def closed_by_server(driver_connection) -> bool:
    """Whether the server has ended this idle PostgreSQL connection (a restart, a failover,
    ``pg_terminate_backend``). It sends its reason, then closes its end, so the socket has
    something to read, which an idle connection that listens for nothing never has otherwise
    (a setting the server reports after a reload counts too: a new connection costs little).

    One system call, where a ping (``SELECT 1``) cost a round trip before the first request
    of every quiet second, so almost every event of a quiet shop: with PostgreSQL 0.78 ms
    away, the answer's median went from 7.1-7.2 to 5.5-5.9 ms (``bench/quiet.py``, issue
    #15). What neither finds: a server ended a few milliseconds ago, which has not said so
    yet (the statement fails, as on a connection lost mid-request), and a host that vanished
    without closing its end (the ping waited for TCP to give up)."""
    poller = select.poll()
    poller.register(driver_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _looked_at_when_lent(engine: Engine) -> Engine:
    """The pool's pre-ping without its round trip (``closed_by_server``): a connection the
    server closed meanwhile is replaced before a statement meets it (SQLAlchemy's pool takes
    ``DisconnectionError`` at checkout for that)."""

    @sa_event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, _record, _proxy):
        if closed_by_server(dbapi_conn):
            raise DisconnectionError("the server closed the connection")

    return engine


def make_request_engine(url: str, deadline: float) -> Engine:
    """PostgreSQL's engine for the request path (the ingest, a quarantine): autocommit, and
    every statement, lock wait and connection attempt ended by the request deadline, so an
    answer never comes after the proxy or Dolibarr gave up. Set once per connection (a
    ``SET`` per request would cost a round trip); the ingest function narrows the lock wait
    to what is left of each request's deadline. A pool of its own: the worker's statements
    keep no timeout."""
    milliseconds = max(1, int(deadline * 1000))
    # libpq counts whole seconds, and at least 2.
    connect_timeout = max(2, min(int(os.environ.get("PGCONNECT_TIMEOUT", "5")), math.ceil(deadline)))
    engine = create_engine(normalise_url(url), pool_pre_ping=True, pool_size=8, max_overflow=16,
                           isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": connect_timeout})

    @sa_event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        with dbapi_conn.cursor() as cursor:
            cursor.execute(f"SET statement_timeout = {milliseconds}; SET lock_timeout = {milliseconds}")

    return _replaced_when_refusing_writes(engine)
