"""The PostgreSQL server the tests run on: its admin URL, and the throw-away databases' URLs
built from it (host, port, credentials and query kept, a Unix socket's ``?host=`` included)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from typing import Iterator

from sqlalchemy.engine import make_url

from dolibarr_webhooks.store import Store, with_database
from dolibarr_webhooks.testing import free_port

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


# -- a failover: a proxy that keeps connections where they were opened, a demoted primary --------
class PinningProxy:
    """A TCP proxy in front of PostgreSQL servers, as HAProxy in front of Patroni is often set
    up: each new connection goes to the server ``to()`` last named, and stays on the server it
    was opened to when the target changes."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def to(self, port: int) -> None:
        self.target = port

    def url(self, url: str) -> str:
        """``url`` (on the admin URL's server) reached through the proxy."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)

    def close(self) -> None:
        self._server.close()
        for sock in self._open:
            sock.close()


def _postgres_bin(name: str) -> str:
    """A server program of the PostgreSQL the tests run on (Debian keeps them off the PATH)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)),
                                       None)
    if found is None:
        raise RuntimeError(f"no PostgreSQL server program {name} on this machine (Debian: postgresql)")
    return found


@contextlib.contextmanager
def demoted_primary(name: str) -> Iterator[int]:
    """A PostgreSQL server of its own (its port), holding database ``name`` migrated by the
    store, then restarted in recovery as a demoted primary is after a failover: it answers
    reads and refuses every write (SQLSTATE 25006) and LISTEN. Run by the ``postgres`` user
    when the tests run as root (the server refuses root)."""
    import psycopg

    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="dw-demoted-")  # not under pytest's tmp_path: root's alone
    if as_postgres:
        shutil.chown(folder, "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    ctl = [*as_postgres, _postgres_bin("pg_ctl"), "-D", data, "-l", os.path.join(folder, "log"), "-w"]
    start = [*ctl, "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"]

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, timeout=60)

    try:
        run(*as_postgres, _postgres_bin("initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(*start)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        store = Store(f"postgresql://postgres@127.0.0.1:{port}/{name}")
        try:
            store.migrate()
        finally:
            store.dispose()
        run(*ctl, "-m", "fast", "stop")
        open(os.path.join(data, "standby.signal"), "w").close()
        if as_postgres:
            shutil.chown(os.path.join(data, "standby.signal"), "postgres")
        run(*start)
        yield port
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
