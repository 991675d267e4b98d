"""Shared fixtures: every storage test runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import uuid

import pytest
from postgres_helpers import POSTGRES_ADMIN_URL, admin_connection, drop_database, on_database


def _postgres_database(options: str = ""):
    """Create a throw-away database (``options``: CREATE DATABASE's); in CI a missing
    PostgreSQL is a failure, never a skip."""
    import psycopg

    name = "dw_test_" + uuid.uuid4().hex[:12]
    try:
        with admin_connection() as conn:
            conn.execute(f'CREATE DATABASE "{name}" {options}')
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    return name, on_database(name)


@pytest.fixture
def postgres_database_url():
    """A throw-away PostgreSQL database, dropped afterwards."""
    name, url = _postgres_database()
    yield url
    drop_database(name)


@pytest.fixture
def icu_postgres_database_url():
    """A throw-away database in ICU's en-US collation, where ":" sorts before "9" as in glibc's
    en_US.UTF-8 (a machine may lack that locale; ICU is in PostgreSQL), dropped afterwards."""
    name, url = _postgres_database("LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0")
    yield url
    drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'webhooks.sqlite3'}"
    return request.getfixturevalue("postgres_database_url")


@pytest.fixture
def migrated_store(database_url):
    """A ``Store`` on ``database_url`` (SQLite, then PostgreSQL), migrated, disposed of after."""
    from dolibarr_webhooks.store import Store

    store = Store(database_url)
    store.migrate()
    yield store
    store.dispose()


@pytest.fixture
def webhooks_config(database_url):
    return {"DATABASE_URL": database_url}


@pytest.fixture
def make_app(database_url, tmp_path, monkeypatch):
    """``make_app(handlers, **settings)``: apps on the test's database with the test plugin's
    handlers configured (tests/testplugin)."""
    from dolibarr_webhooks_testplugin import app_factory

    monkeypatch.chdir(tmp_path)
    with app_factory(database_url) as make:
        yield make
