"""``serve``'s worker class (``web.gunicorn.ThreadWorker``) waits for a kept-alive
connection's next request in the thread that answered the last one (``next_request_within``),
instead of handing the connection back to gthread's main loop. What must not change: every
request answered, in order, whether the next one comes at once, after the wait, piped behind
the last one, or never; and a thread waiting on one connection never keeps another waiting
for long.

The first test reads a real socket pair through gunicorn's own connection and parser; the
others talk HTTP to a real gunicorn.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from gunicorn.config import Config
from gunicorn.workers.gthread import TConn

from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET
from dolibarr_webhooks.testing import running_service
from dolibarr_webhooks.web.gunicorn import NEXT_REQUEST_WAIT_MS, next_request_within
from production_helpers import THREAD_WORKER, post_kept_alive


def _connection() -> tuple[TConn, socket.socket]:
    server_side, client_side = socket.socketpair()
    conn = TConn(Config(), server_side, ("127.0.0.1", 5000), ("127.0.0.1", 8000))
    conn.init()  # gunicorn's parser over the socket, as a worker thread makes it
    return conn, client_side


def _waited(conn: TConn, milliseconds: int) -> tuple[bool, float]:
    started = time.monotonic()
    found = next_request_within(conn, milliseconds)
    return found, time.monotonic() - started


def test_next_request_within_sees_a_request_a_close_or_nothing():
    conn, client = _connection()
    try:
        found, waited = _waited(conn, 50)
        assert not found and waited >= 0.045, "nothing sent: the whole wait, then back to the poller"

        client.sendall(b"GET / HTTP/1.1\r\n")
        found, waited = _waited(conn, 5000)
        assert found and waited < 1, "a request's first bytes end the wait at once"
        assert next_request_within(conn, 0), "they stay to be read"
        conn.sock.recv(100)

        conn.parser.unreader.unread(b"GET /next HTTP/1.1\r\n\r\n")  # read ahead with the last body
        found, waited = _waited(conn, 5000)
        assert found and waited < 1, "bytes the parser holds are a next request, though the socket has none"
        conn.parser.unreader.take_buffered()

        client.close()
        found, waited = _waited(conn, 5000)
        assert found and waited < 1, "a close is read at once too (the parser then ends the connection)"
    finally:
        conn.sock.close()


@pytest.fixture(scope="module")
def one_process():
    with running_service(workers=1, worker=False, gunicorn_args=[*THREAD_WORKER, "--threads", "2",
                                                                 "--keep-alive", "5"]) as service:
        yield service


def test_kept_alive_requests_are_answered_at_once_or_after_a_pause(one_process):
    connection = http.client.HTTPConnection("127.0.0.1", one_process.port, timeout=10)
    ids = []
    try:
        for number in range(30):
            # Most come at once (answered by the thread waiting), some after the wait is over
            # (the connection was back in gthread's poller).
            if number % 10 == 9:
                time.sleep(3 * NEXT_REQUEST_WAIT_MS / 1000)
            ids.append(post_kept_alive(connection, 700_000 + number)["id"])
            assert connection.sock is not None, "the connection was kept alive"
    finally:
        connection.close()
    assert len(set(ids)) == 30
    for event_id in (ids[0], ids[9], ids[10], ids[-1]):  # before and after a pause: stored
        assert json.loads(one_process.cli("show", event_id, "--json").stdout)["id"] == event_id


def test_requests_piped_behind_each_other_are_all_answered(one_process):
    body = sample_body("BILL_PAYED")
    request = (f"POST /webhook/{SECRET} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", one_process.port), timeout=10) as sock:
        sock.sendall(request * 3)
        received = b""
        while received.count(b"HTTP/1.1 200") < 3:
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {received.count(b'HTTP/1.1 200')} answers"
            received += chunk
    assert received.count(b"HTTP/1.1 ") == 3


def test_clients_that_close_after_their_answer_leave_no_thread_behind(one_process):
    # Dolibarr's curl: a new connection per event, closed once the answer is read. Two threads,
    # forty connections one after another: a thread left waiting on a closed connection would
    # soon leave none to answer.
    started = time.monotonic()
    for number in range(40):
        connection = http.client.HTTPConnection("127.0.0.1", one_process.port, timeout=10)
        post_kept_alive(connection, 800_000 + number)
        connection.close()
    assert time.monotonic() - started < 30


def test_a_connection_kept_alive_does_not_hold_the_only_thread(tmp_path):
    with running_service(workers=1, worker=False, gunicorn_args=[*THREAD_WORKER, "--threads", "1",
                                                                 "--keep-alive", "30"]) as service:
        idle = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        other = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        try:
            post_kept_alive(idle, 900_000)  # then silent, kept alive for 30 s
            started = time.monotonic()
            post_kept_alive(other, 900_001)
            assert time.monotonic() - started < 2, "answered while the first connection stays open and silent"
            post_kept_alive(idle, 900_002)  # and the first one is still served
        finally:
            idle.close()
            other.close()
