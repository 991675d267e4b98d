"""The floor of ``bench/ingest.py --floor``: the least any receiver that keeps what it
acknowledges must do, as a Flask app beside ``noop_app.py``.

``/append``: append the raw body to a file of this process and ``fdatasync`` it, then answer
200 JSON: no authentication, no parsing, no index, no database. ``/parse-append``: the same
after checking that the body is JSON (with orjson, the fastest decoder on PyPI), since a
receiver must answer 400 to a body that is not. Whatever the durable receiver's design, its
requests/s cannot pass these two on the same machine, so their ratio to the no-op endpoint
bounds the ratio the issue asks of it.
"""

from __future__ import annotations

import os

import orjson
from flask import Flask, jsonify, request

app = Flask(__name__)
_spool: dict[int, int] = {}  # pid -> descriptor: gunicorn forks after import


def _append(body: bytes) -> None:
    pid = os.getpid()
    if pid not in _spool:
        path = os.path.join(os.environ.get("BENCH_SPOOL_DIR", "."), f"spool-{pid}.bin")
        _spool[pid] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_spool[pid], len(body).to_bytes(4, "big") + body)
    os.fdatasync(_spool[pid])


@app.post("/append/<path:_path>")
def append(_path: str):
    body = request.get_data(cache=False)
    _append(body)
    return jsonify({"status": "accepted", "size": len(body)}), 200


@app.post("/parse-append/<path:_path>")
def parse_append(_path: str):
    body = request.get_data(cache=False)
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return jsonify({"error": "invalid_json"}), 400
    _append(body)
    return jsonify({"status": "accepted", "size": len(body)}), 200
