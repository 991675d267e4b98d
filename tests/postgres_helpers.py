"""The PostgreSQL server the tests run on: its admin URL, and the throw-away databases' URLs
built from it (host, port, credentials and query kept, a Unix socket's ``?host=`` included)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator

from sqlalchemy.engine import make_url

from dolibarr_webhooks.store import with_database

POSTGRES_ADMIN_URL = os.environ.get("DOLIBARR_WEBHOOKS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def on_database(name: str) -> str:
    """The admin URL with its database renamed ``name``."""
    return with_database(POSTGRES_ADMIN_URL, name)


def database_name(url: str) -> str:
    """The database a PostgreSQL URL names, whatever its driver or query."""
    return make_url(url).database


def admin_connection():
    """An autocommit connection to the admin database, beside a test's own: to create or drop
    it, end its sessions or change its settings. A server that does not answer fails it within
    5 s."""
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)


def drop_database(name: str, if_exists: bool = True) -> None:
    """``DROP DATABASE ... WITH (FORCE)``. The server checkpoints for each drop, and a
    checkpoint fails while a test holds a database on a full disk
    (test_production_store_faults.py), dirty pages it cannot write: tried again until it
    grows, within a minute."""
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            with admin_connection() as conn:
                conn.execute(f'DROP DATABASE {"IF EXISTS " if if_exists else ""}"{name}" WITH (FORCE)')
            return
        except psycopg.errors.InternalError as exc:
            if "checkpoint request failed" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def end_sessions(conn, name: str) -> None:
    """The server ends every session of database ``name`` (``conn``: an admin connection), and
    is waited for until each is gone (its client's socket then says so)."""
    conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = %s", (name,))


@contextlib.contextmanager
def refusing_connections(name: str) -> Iterator[None]:
    """Database ``name`` down, as while a server restarts: its sessions ended, and new ones
    refused until the block ends."""
    with admin_connection() as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        end_sessions(conn, name)
    try:
        yield
    finally:
        with admin_connection() as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
