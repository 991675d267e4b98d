"""Both of our gunicorn worker classes send an answer's head and its body in one send
(``web.gunicorn._ReadDeadline``): gunicorn sends the head on its own, then the body, two
packets and two wake-ups of the client for a webhook's 100-byte answer (issue #15).

A real gunicorn serves a small application of the test's own; a client on a real TCP
connection counts the packets that carried data to it (the kernel's ``tcpi_data_segs_in``).
gunicorn's own gthread worker is the control: two packets, and the same bytes for every kind
of answer (a body, none, chunks, a file gunicorn sends with ``sendfile``).
"""

from __future__ import annotations

import re
import socket
import struct
import time
from urllib.parse import urlsplit

import pytest

from hostile_helpers import answer_complete
from production_helpers import plain_app_under_gunicorn

APP = '''
import os


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/file":  # gunicorn sends it with sendfile, after the head
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(os.path.getsize(__file__)))])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"))
    if path == "/text":  # not bytes: gunicorn fails after the head, and closes the connection
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return ["text"]
    if path == "/empty":
        start_response("204 No Content", [])
        return []
    if path == "/chunks":  # no Content-Length: gunicorn frames the chunks
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"first,", b"second,", b"third"]
    body = b'{"status": "stored", "id": "evt_0123456789abcdef"}\\n'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
'''

OURS = ["dolibarr_webhooks.web.gunicorn.ThreadWorker", "dolibarr_webhooks.web.gunicorn.SyncWorker"]
_DATA_SEGS_IN = 152  # struct tcp_info's tcpi_data_segs_in (Linux 4.6 and newer)


def _data_packets_in(sock: socket.socket) -> int:
    return struct.unpack_from("@I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232), _DATA_SEGS_IN)[0]


def _answers(url: str, requests: list[tuple[str, str]], kept_alive: bool = True) -> list[tuple[bytes, int]]:
    """Each answer to ``(method, path)``, the requests sent one after the other on one
    kept-alive connection (the last asks to close it), or each on its own: its bytes, Date
    line removed, and the packets that carried them."""
    if not kept_alive:
        return [answer for request in requests for answer in _answers(url, [request])]
    address = urlsplit(url)
    answers = []
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        for number, (method, path) in enumerate(requests, 1):
            last = number == len(requests)
            before = _data_packets_in(sock)
            closing = "Connection: close\r\n" if last else ""
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: test\r\n{closing}\r\n".encode())
            answer = _read_answer(sock, method, until_closed=last)
            time.sleep(0.05)  # a packet still on its way is counted too
            answers.append((re.sub(rb"Date: [^\r]*\r\n", b"", answer), _data_packets_in(sock) - before))
    return answers


def _read_answer(sock: socket.socket, method: str, until_closed: bool) -> bytes:
    data = b""
    while until_closed or not answer_complete(data, method):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def _without_connection(answer: bytes) -> bytes:
    return re.sub(rb"Connection: [^\r]*\r\n", b"", answer)


REQUESTS = [("POST", "/small"), ("GET", "/small"), ("HEAD", "/small"), ("GET", "/empty"), ("GET", "/chunks"),
            ("GET", "/file"), ("GET", "/small")]


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> list[tuple[bytes, int]]:
    with plain_app_under_gunicorn(tmp_path_factory.mktemp("gthread"), APP, "-k", "gthread") as served:
        return _answers(served.url, REQUESTS)


def test_gunicorns_own_worker_sends_head_and_body_apart(control):
    # The control: the count below sees what it counts.
    small = dict(zip(REQUESTS, control))[("POST", "/small")]
    assert small[1] == 2


@pytest.mark.parametrize("worker_class", OURS)
def test_an_answer_leaves_in_one_packet(tmp_path, worker_class, control):
    with plain_app_under_gunicorn(tmp_path, APP, "-k", worker_class) as served:
        answers = _answers(served.url, REQUESTS, kept_alive=worker_class.endswith("ThreadWorker"))
    for request, (answer, packets), (expected, _) in zip(REQUESTS, answers, control):
        # The same bytes as gunicorn's own (the sync worker closes every connection).
        assert _without_connection(answer) == _without_connection(expected), request
        if request[1] == "/small" or request[0] == "HEAD" or request[1] == "/empty":
            assert packets == 1, request  # a bodiless answer leaves too, at its request's end
    assert answers[0][0].startswith(b"HTTP/1.1 200 OK\r\n") and answers[0][0].endswith(b'"evt_0123456789abcdef"}\n')
    assert answers[4][0].endswith(b"5\r\nthird\r\n0\r\n\r\n")  # the chunks, framed, after the head
    assert answers[5][0].endswith(APP.encode())  # the file, after the head


@pytest.mark.parametrize("worker_class", [*OURS, "gthread"])
def test_an_answer_that_breaks_off_sends_its_head_before_the_close(tmp_path, worker_class):
    with plain_app_under_gunicorn(tmp_path, APP, "-k", worker_class) as served:
        (answer, _), = _answers(served.url, [("GET", "/text")])
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"Content-Length: 4\r\n\r\n")
