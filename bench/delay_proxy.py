"""A TCP proxy that holds every chunk of bytes ``--delay`` milliseconds each way: a database
on another host, for benchmarks on one machine (``drain.py --network-delay``), where
``tc netem`` is not available to an unprivileged container.

    python bench/delay_proxy.py --listen 127.0.0.1:6543 --to 127.0.0.1:5432 --delay 0.25

A round trip through it takes twice the delay, plus the proxy's own hops and the
scheduler's wake-up (``round_trip_ms`` measures it). The order of the bytes is kept: each
direction is one queue, written by one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time


def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
    held: queue.SimpleQueue = queue.SimpleQueue()

    def send() -> None:
        while True:
            due, data = held.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                target.sendall(data)
            except OSError:
                break
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=send, daemon=True).start()
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            held.put((0.0, None))
            return
        held.put((time.monotonic() + delay, data))


def serve(listen: tuple[str, int], to: tuple[str, int], delay_ms: float) -> None:
    server = socket.create_server(listen, reuse_port=False)
    delay = delay_ms / 1000
    while True:
        client, _ = server.accept()
        upstream = socket.create_connection(to)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True).start()


@contextlib.contextmanager
def delayed(url: str | None, delay_ms: float):
    """A PostgreSQL ``url`` reached through this proxy, started for the block (``url`` itself
    without a delay, or without a URL: an SQLite store makes its own)."""
    if not delay_ms or not url:
        yield url
        return
    from sqlalchemy.engine import make_url

    from dolibarr_webhooks.testing import free_port, wait_for_port

    parsed = make_url(url)
    port = free_port()
    proxy = subprocess.Popen([sys.executable, __file__, "--listen", f"127.0.0.1:{port}",
                              "--to", f"{parsed.host}:{parsed.port or 5432}", "--delay", str(delay_ms)])
    try:
        wait_for_port(port)
        yield parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    finally:
        proxy.kill()
        proxy.wait()


def round_trip_ms(url: str, count: int = 200) -> float:
    """The median time of ``SELECT 1`` on a PostgreSQL connection to ``url``."""
    import psycopg

    times = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1000


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_address, required=True)
    parser.add_argument("--to", type=_address, required=True)
    parser.add_argument("--delay", type=float, required=True, help="milliseconds, each way")
    args = parser.parse_args(argv)
    serve(args.listen, args.to, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
