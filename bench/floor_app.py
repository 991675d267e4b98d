"""The floors of ``bench/ingest.py --floor``: the least any receiver must do, as a Flask app
beside ``noop_app.py``, under the same gunicorn settings.

- ``/append``: append the raw body to a file of this process and ``fdatasync`` it, then
  answer 200 JSON: no authentication, no parsing, no index, no database. The least a
  receiver that keeps what it acknowledges does.
- ``/scrub``: parse the body and scrub Dolibarr's database handler from it with the
  product's own ``payload.parse_body`` (orjson and the key-dropping walk), then answer; store
  nothing. The least a receiver that scrubs before it stores does, even if storing were free.
- ``/scrub-append``: both; the scrubbed object, re-encoded, is what is appended.
- ``/append-grouped``: ``/append`` with group commit: a thread that finds another's
  ``fdatasync`` under way waits for it and syncs only if its own write was not covered, so
  the threads of a ``gthread`` worker share fsyncs (with sync workers, one request per
  process, it is ``/append``). The bound of a receiver that batches its commits.
- ``/sqlite-insert``: the least durable Flask receiver people write (issue #15's floor):
  ``json.loads`` the body, then INSERT the raw body into SQLite (WAL, ``synchronous=FULL``,
  autocommit), answer 200. ``/postgres-insert``: the same into PostgreSQL, autocommit
  (``BENCH_POSTGRES_URL``). No authentication, no scrub, no deliveries, no index.
- ``/sqlite-grouped``: ``/sqlite-insert`` with group commit: the bodies of the threads of a
  process waiting while a commit is under way are INSERTed together in the next transaction,
  one fsync for all of them, each answered only once that transaction is committed; the
  processes take turns on a ``flock``. ``/postgres-grouped``: the same into PostgreSQL (one
  flush of the WAL for the transaction; PostgreSQL orders the processes' transactions
  itself). The least durable receiver, batching: what the durable one's group commit is up
  against.

Whatever the durable receiver's design, its requests/s cannot pass these on the same
machine, so their ratios to the no-op endpoint bound the ratio the issue asks of it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading

import orjson
from flask import Flask, jsonify, request

from dolibarr_webhooks.pipeline.parse import ParseError, parse_body

app = Flask(__name__)
_descriptors: dict[tuple[int, str], int] = {}  # (pid, file name) -> descriptor: gunicorn forks after import


def _in_spool_dir(filename: str) -> str:
    return os.path.join(os.environ.get("BENCH_SPOOL_DIR", "."), filename)


def _opened(filename: str, flags: int) -> int:
    """This process's descriptor of ``filename`` in the spool folder, opened on first use."""
    key = (os.getpid(), filename)
    if key not in _descriptors:
        _descriptors[key] = os.open(_in_spool_dir(filename), flags | os.O_CREAT, 0o600)
    return _descriptors[key]


def _spool(name: str) -> int:
    """This process's append-only file ``<name>-<pid>.bin``."""
    return _opened(f"{name}-{os.getpid()}.bin", os.O_WRONLY | os.O_APPEND)


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _append(body: bytes) -> None:
    fd = _spool("spool")
    os.write(fd, _framed(body))
    os.fdatasync(fd)


class _GroupSync:
    """fdatasync shared by the threads of one process: write numbers go up; a sync covers
    every write numbered before it began."""

    def __init__(self) -> None:
        self.count_lock, self.sync_lock = threading.Lock(), threading.Lock()
        self.written = self.synced = 0

    def append(self, fd: int, record: bytes) -> None:
        with self.count_lock:
            os.write(fd, record)
            self.written += 1
            mine = self.written
        with self.sync_lock:
            if self.synced >= mine:
                return  # a sync that began after this write has finished
            with self.count_lock:
                covered = self.written
            os.fdatasync(fd)
            self.synced = covered


_GROUP = _GroupSync()  # each forked process has its own copy, unlocked


def _append_grouped(body: bytes) -> None:
    _GROUP.append(_spool("spool-grouped"), _framed(body))


def _scrubbed(body: bytes) -> bytes:
    code, obj = parse_body(body)
    return orjson.dumps({"triggercode": code, "object": obj})


_connections: dict[tuple[int, str], object] = {}  # (pid, kind) -> connection, opened after the fork


def _sqlite():
    key = (os.getpid(), "sqlite")
    if key not in _connections:
        conn = sqlite3.connect(_in_spool_dir("floor.sqlite3"), isolation_level=None, timeout=30,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS bodies (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        _connections[key] = conn
    return _connections[key]


def _postgres():
    import psycopg

    key = (os.getpid(), "postgres")
    if key not in _connections:
        conn = psycopg.connect(os.environ["BENCH_POSTGRES_URL"], autocommit=True)
        conn.execute("CREATE TABLE IF NOT EXISTS bodies (id bigserial PRIMARY KEY, body bytea NOT NULL)")
        _connections[key] = conn
    return _connections[key]


def _insert(connection, statement: str):
    """The least durable receiver: ``json.loads``, INSERT the raw body in autocommit, answer."""
    body = request.get_data(cache=False)
    json.loads(body)
    connection.execute(statement, (body,))
    return jsonify({"status": "accepted"}), 200


class _GroupInsert:
    """INSERTs of the threads of one process, committed together: a thread that finds a
    commit under way queues its body and waits; the next to lead commits every body queued
    in one transaction (``write``), and each thread answers once the transaction of its body
    returned."""

    def __init__(self, write) -> None:
        self.write = write  # (connection, bodies): INSERT them all in one transaction
        self.turn = threading.Condition()
        self.queued: list[list] = []  # [body, done, error]
        self.leading = False

    def insert(self, connection, body: bytes) -> None:
        mine = [body, False, None]
        with self.turn:
            self.queued.append(mine)
            while self.leading and not mine[1]:
                self.turn.wait()
            if not mine[1]:
                self.leading, batch, self.queued = True, self.queued, []
        if mine[1]:
            if mine[2] is not None:
                raise mine[2]
            return
        error = None
        try:
            self.write(connection, [entry[0] for entry in batch])
        except Exception as exc:
            error = exc
        with self.turn:
            for entry in batch:
                entry[1], entry[2] = True, error
            self.leading = False
            self.turn.notify_all()
        if error is not None:
            raise error


def _write_sqlite(connection, bodies: list[bytes]) -> None:
    # The processes' leaders take turns on a flock, which wakes the next at once, rather
    # than on SQLite's busy handler, which sleeps and retries (p99 of 300 ms at c=16).
    fcntl.flock(_lock_file(), fcntl.LOCK_EX)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("INSERT INTO bodies (body) VALUES (?)", [(body,) for body in bodies])
        connection.execute("COMMIT")
    except sqlite3.Error:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    finally:
        fcntl.flock(_lock_file(), fcntl.LOCK_UN)


def _write_postgres(connection, bodies: list[bytes]) -> None:
    # PostgreSQL orders concurrent writers itself. BEGIN, the INSERTs and COMMIT in one
    # pipeline: one round trip, as the durable receiver sends a batch.
    from psycopg import Error
    from psycopg.pq import TransactionStatus

    try:
        with connection.pipeline():
            connection.execute("BEGIN")
            connection.cursor().executemany("INSERT INTO bodies (body) VALUES (%s)", [(body,) for body in bodies])
            connection.execute("COMMIT")
    except Error:
        if connection.info.transaction_status != TransactionStatus.IDLE:
            connection.execute("ROLLBACK")
        raise


def _lock_file() -> int:
    """This process's descriptor of the writers' lock file beside the floor's database."""
    return _opened("floor.sqlite3.lock", os.O_RDWR)


# Each forked process has its own copies, unlocked.
_GROUP_INSERTS = {"sqlite": (_sqlite, _GroupInsert(_write_sqlite)),
                  "postgres": (_postgres, _GroupInsert(_write_postgres))}


@app.post("/<any(sqlite, postgres):store>-grouped/<path:_path>")
def grouped_insert(store: str, _path: str):
    body = request.get_data(cache=False)
    json.loads(body)
    connect, group = _GROUP_INSERTS[store]
    group.insert(connect(), body)
    return jsonify({"status": "accepted"}), 200


@app.post("/sqlite-insert/<path:_path>")
def sqlite_insert(_path: str):
    return _insert(_sqlite(), "INSERT INTO bodies (body) VALUES (?)")


@app.post("/postgres-insert/<path:_path>")
def postgres_insert(_path: str):
    return _insert(_postgres(), "INSERT INTO bodies (body) VALUES (%s)")


@app.post("/append/<path:_path>")
def append(_path: str):
    body = request.get_data(cache=False)
    _append(body)
    return jsonify({"status": "accepted", "size": len(body)}), 200


@app.post("/scrub/<path:_path>")
def scrub(_path: str):
    body = request.get_data(cache=False)
    try:
        size = len(_scrubbed(body))
    except ParseError:
        return jsonify({"error": "bad_request"}), 400
    return jsonify({"status": "accepted", "size": size}), 200


@app.post("/scrub-append/<path:_path>")
def scrub_append(_path: str):
    body = request.get_data(cache=False)
    try:
        scrubbed = _scrubbed(body)
    except ParseError:
        return jsonify({"error": "bad_request"}), 400
    _append(scrubbed)
    return jsonify({"status": "accepted", "size": len(scrubbed)}), 200


@app.post("/append-grouped/<path:_path>")
def append_grouped(_path: str):
    body = request.get_data(cache=False)
    _append_grouped(body)
    return jsonify({"status": "accepted", "size": len(body)}), 200
