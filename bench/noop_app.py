"""The no-op baseline of ``bench/ingest.py``: a Flask app that reads the whole body of a POST
and answers 200 JSON, doing nothing else. Served by gunicorn with the product's settings,
it is the ceiling the durable receiver is compared with."""

from __future__ import annotations

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/")
@app.post("/<path:_path>")
def accept(_path: str = ""):
    body = request.get_data(cache=False)  # read it all, as the receiver does
    return jsonify({"status": "accepted", "size": len(body)}), 200
