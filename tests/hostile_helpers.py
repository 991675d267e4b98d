"""Hostile HTTP, byte for byte: what an attacker or a broken client sends, over raw sockets
(a library would refuse to send most of it); and Dolibarr's real bodies mutated at random,
which a forger (never Dolibarr) could post with the secret. Used by tests/test_hostile.py
and the figures of bench/hostile.py."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from dolibarr_webhooks.samples import sample_body, sample_codes

MIB = 1024 * 1024


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes
    stall: bool = False  # sent, then the connection is kept open without another byte
    chunk_mib: int = 0  # then this many MiB of chunked body, streamed (too big to hold as bytes)


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    head: str
    body: bytes
    elapsed: float

    @property
    def is_json(self) -> bool:
        return "content-type: application/json" in self.head.lower()


def _request(target: str, body: bytes = b"", headers: dict[str, str] | None = None, method: str = "POST",
             chunked: bool = False) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: Dolibarr geturl function",
             "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif "Content-Length" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (_chunks(body) if chunked else body)


def _chunks(body: bytes, size: int = 1000) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def hostile_requests(secret: str, count: int, seed: int = 10, stalls: int = 6, oversized: int = 2) -> list[Hostile]:
    """``count`` requests drawn from every family below (each family at least once), with
    ``stalls`` stalled ones and ``oversized`` chunked bodies over 16 MiB among them."""
    rng = random.Random(seed)
    url = f"/webhook/{secret}"
    valid = sample_body("BILL_VALIDATE")
    families = {
        "truncated json": lambda: _request(url, valid[:rng.randrange(1, len(valid))]),
        "garbage bytes": lambda: _request(url, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))),
        "json but not an object": lambda: _request(url, rng.choice([b"[]", b"1", b'"x"', b"null", b"[1,2]"])),
        "no trigger code": lambda: _request(url, b'{"object":{"id":1}}'),
        "lone surrogate": lambda: _request(url, b'{"triggercode":"BILL_PAYED","object":{"ref":"\\ud8%02x"}}'
                                           % rng.randrange(256)),
        "surrogate in the code": lambda: _request(url, b'{"triggercode":"X\\udc00","object":{}}'),
        "deep nesting, unclosed": lambda: _request(url, b'{"triggercode":"BILL_PAYED","object":'
                                                   + b"[" * rng.choice([600, 1000, 5000, 100_000]) + b"}"),
        "deep nesting closed": lambda: _request(url, b'{"triggercode":"BILL_PAYED","object":{"a":'
                                                + b"[" * 1000 + b"]" * 1000 + b"}}"),
        "NaN and huge numbers": lambda: _request(url, b'{"triggercode":"BILL_PAYED","object":{"a":NaN,"b":'
                                                 + b"9" * 5000 + b"}}"),
        "BOM": lambda: _request(url, b"\xef\xbb\xbf" + sample_body("BILL_PAYED")),
        "NUL in strings": lambda: _request(url, b'{"triggercode":"BILL_PAYED","object":{"note":"a\\u0000b"}}'),
        "empty body": lambda: _request(url, b""),
        "unauthenticated garbage": lambda: _request("/webhook", b"{garbage"),
        "wrong secret": lambda: _request("/webhook/wrong-secret-0123456789", valid),
        "double slash": lambda: _request(f"/webhook//{secret}", valid),
        "trailing slash": lambda: _request(f"/webhook/{secret}/", valid),
        "content-length lies short": lambda: _request(url, valid, {"Content-Length": str(len(valid) - 100)}),
        "content-length over the limit": lambda: _request(url, b"{}", {"Content-Length": str(17 * MIB)}),
        "negative content-length": lambda: _request(url, b"{}", {"Content-Length": "-1"}),
        "two content-lengths": lambda: _request(url, b"{}", {"Content-Length": "2", "content-length": "3"}),
        "content-length and chunked": lambda: _request(url, b"{}", {"Content-Length": "2", "Transfer-Encoding":
                                                                    "chunked"}),
        "chunked, valid": lambda: _request(url, valid, chunked=True),
        "chunked, bad size": lambda: _request(url, b"", chunked=True)[:-5] + b"ZZ\r\nabc\r\n0\r\n\r\n",
        "chunked, short chunk": lambda: _request(url, b"", chunked=True)[:-5] + b"5\r\nabc\r\n0\r\n\r\n",
        "chunked, no terminator": lambda: _request(url, b"", chunked=True)[:-5] + b"3\r\nabcXY0\r\n\r\n",
        "chunked, bad extension": lambda: _request(url, b"", chunked=True)[:-5] + b"3;\x01=\x02\r\nabc\r\n0\r\n\r\n",
        "chunked, huge size": lambda: _request(url, b"", chunked=True)[:-5] + b"fffffffffffffffffff\r\nabc\r\n",
        "chunked, unauthenticated and bad": lambda: _request("/webhook", b"", chunked=True)[:-5] + b"Q\r\n\r\n",
        "unknown transfer coding": lambda: _request(url, b"{}", {"Transfer-Encoding": "gzip, chunked"}),
        "bad request line": lambda: f"GARBAGE {url} HTTP/1.1 extra\r\n\r\n".encode(),
        "bad method": lambda: f"P\x01ST {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"),
        "bad version": lambda: f"POST {url} HTTP/9.9\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(),
        "header without colon": lambda: f"POST {url} HTTP/1.1\r\nHost x\r\nContent-Length: 0\r\n\r\n".encode(),
        "bad header name": lambda: _request(url, b"{}", {"X Bad(Name)": "1"}),
        "NUL in a header": lambda: _request(url, b"{}", {"X-Note": "a\x00b"}),
        "obsolete folding": lambda: f"POST {url} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n"
                                    f"Content-Length: 0\r\n\r\n".encode(),
        "huge header": lambda: _request(url, b"{}", {"X-Big": "a" * 10_000}),
        "too many headers": lambda: _request(url, b"{}", {f"X-H{i}": "1" for i in range(150)}),
        "request line too long": lambda: _request(url + "?x=" + "a" * 6000, b"{}"),
        "forwarded-for forged and long": lambda: _request(url, sample_body("BILL_PAYED"),
                                                          {"X-Forwarded-For": ",".join(["10.0.0.1"] * 500)}),
        "Expect 100-continue, no body": lambda: _request(url, b"", {"Expect": "100-continue",
                                                                    "Content-Length": "100"}),
        "unknown Expect": lambda: _request(url, b"{}", {"Expect": "something-else"}),
        "wrong method": lambda: _request(url, b"{}", method="DELETE"),
        "valid event": lambda: _request(url, _unique(rng)),
    }
    names = list(families)
    requests = [Hostile(name, families[name]()) for name in names[:count]]
    while len(requests) < count - stalls - oversized:
        name = rng.choice(names)
        requests.append(Hostile(name, families[name]()))
    for index in range(stalls):
        if index % 3 == 0:
            requests.append(Hostile("stalled head", f"POST {url} HTTP/1.1\r\nHost: x\r\n".encode(), stall=True))
        elif index % 3 == 1:
            requests.append(Hostile("stalled chunked body", _request(url, b"", chunked=True)[:-5] + b"400\r\nabc",
                                    stall=True))
        else:
            requests.append(Hostile("stalled body", _request(url, b"", {"Content-Length": "5000"}) + b"{", stall=True))
    for _ in range(oversized):
        requests.append(Hostile("chunked over the limit", _request(url, b"", chunked=True)[:-5], chunk_mib=17))
    rng.shuffle(requests)
    return requests


# What a mutation puts in a body: text a column, a page or a log line must hold (NUL, lone
# surrogates, U+10FFFF, markup, quotes), numbers past 64 bits, and the wrong types.
ODD_TEXT = ["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "\U0010ffff", "é" * 3, "<script>alert(1)</script>",
            "'; DROP TABLE events; --", "a" * 3000, "{{7*7}}", "\u202e", "😀", "1e999", "-1", "0", "²", "null",
            "BILL_VALIDATE", " bill_validate ", "INVOICE_VALIDATE", "\r\nSet-Cookie: x=1", "\\", '"', "../../x"]
ODD_NUMBERS = [0, -1, 2**63, 2**64, -2**63 - 1, 10**30, 1.5, -0.0, 1e308]
_KEY_PATHS = [("triggercode",), ("object",), ("object", "id"), ("object", "ref"), ("object", "entity"),
              ("object", "element"), ("object", "lines"), ("object", "socid"), ("object", "name"),
              ("object", "label"), ("object", "total_ttc"), ("object", "status"), ("object", "email"),
              ("object", "array_options"), ("object", "newref"), ("object", "thirdparty")]


def _odd_value(rng: random.Random, depth: int = 0):
    draw = rng.random()
    if draw < 0.35:
        return rng.choice(ODD_TEXT)
    if draw < 0.55:
        return rng.choice(ODD_NUMBERS)
    if draw < 0.65:
        return rng.choice([None, True, False])
    if draw < 0.8 and depth < 3:
        return [_odd_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if depth < 3:
        return {rng.choice(ODD_TEXT + ["id", "ref", "db", "lines"]): _odd_value(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return {}


def _places(value, path: tuple = ()) -> Iterator[tuple]:
    yield path
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _places(child, path + (key,))


def mutated_bodies(count: int, seed: int) -> list[bytes]:
    """``count`` of Dolibarr's sample bodies, each with one to four odd values put in (a known
    key or anywhere), keys removed, or the whole replaced; some then cut short or with bytes
    changed. Seeded: a failing body comes back with the same seed."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        data = json.loads(sample_body(rng.choice(sample_codes())))
        for _ in range(rng.randint(1, 4)):
            draw = rng.random()
            if draw < 0.45:
                *parents, key = rng.choice(_KEY_PATHS)
                node = data
                for parent in parents:
                    node = node.setdefault(parent, {}) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node[key] = _odd_value(rng)
            elif draw < 0.85:
                path = rng.choice(list(_places(data)))
                if not path:
                    continue
                node = data
                for step in path[:-1]:
                    node = node[step]
                if draw < 0.75:
                    node[path[-1]] = _odd_value(rng)
                else:
                    del node[path[-1]]
            else:
                data = _odd_value(rng)
        raw = json.dumps(data, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        draw = rng.random()
        if draw < 0.08:
            raw = raw[:rng.randrange(len(raw) + 1)]
        elif draw < 0.16:
            changed = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                changed[rng.randrange(len(changed))] = rng.randrange(256)
            raw = bytes(changed)
        bodies.append(raw)
    return bodies


def _unique(rng: random.Random) -> bytes:
    body = json.loads(sample_body(rng.choice(sample_codes())))
    body["object"]["id"] = rng.randrange(10**9)
    return json.dumps(body).encode()


def connect(port: int, context: ssl.SSLContext | None = None, timeout: float = 60) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(sock, server_hostname="127.0.0.1") if context else sock


def send(port: int, request: Hostile, context: ssl.SSLContext | None = None, timeout: float = 60) -> Answer:
    """Send one request and read the answer until the server closes (or ``timeout``)."""
    started = time.monotonic()
    sock = connect(port, context, timeout)
    try:
        with contextlib.suppress(OSError):  # the server may answer (413, 400) and close mid-body
            sock.sendall(request.data)
            for _ in range(request.chunk_mib * 16):
                chunk = b"x" * 65536
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if request.chunk_mib:
                sock.sendall(b"0\r\n\r\n")
        received = b""
        with contextlib.suppress(OSError):
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                if answer_complete(received):
                    break
    finally:
        sock.close()
    head, _, body = _final(received).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split(b" ")
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else None
    return Answer(status, head.decode("latin-1"), body, time.monotonic() - started)


def _final(received: bytes) -> bytes:
    """Without the interim answers (100 Continue) before the final one."""
    while received.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in received:
        received = received.partition(b"\r\n\r\n")[2]
    return received


def answer_complete(received: bytes, method: str = "POST") -> bool:
    """Whether ``received`` holds a whole final answer: its head, then the body its
    ``Content-Length`` or chunked framing says; none after ``HEAD``, a 204 or a 304. Without
    either, only the server's close ends it."""
    head, sep, body = _final(received).partition(b"\r\n\r\n")
    if not sep:
        return False
    lines = head.split(b"\r\n")
    if method == "HEAD" or lines[0].split(b" ")[1:2] in ([b"204"], [b"304"]):
        return True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            return len(body) >= int(value)
        if name == b"transfer-encoding" and value == b"chunked":
            return body.endswith(b"0\r\n\r\n")
    return False


@contextlib.contextmanager
def slowloris(port: int, connections: int = 20) -> Iterator[dict[str, int]]:
    """``connections`` clients sending a request head one byte a second, each reconnecting
    as soon as the server drops it, until the block ends. Yields counters."""
    stop = threading.Event()
    counters = {"connections": 0, "dropped": 0}
    head = b"POST /webhook/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n" + b"X-Slow: 1\r\n" * 200

    def attacker() -> None:
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                stop.wait(0.1)
                continue
            counters["connections"] += 1
            try:
                for byte in head:
                    sock.sendall(bytes([byte]))
                    if stop.wait(1.0):
                        break
            except OSError:
                counters["dropped"] += 1
            finally:
                sock.close()

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # every attacker connected and holding
    try:
        yield counters
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
