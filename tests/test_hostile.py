"""Hostile input: whatever an authenticated (or not) client sends, the answer is JSON with
a status below 500, and what is answered 2xx is stored.

The first tests go through the application on SQLite and PostgreSQL (conftest's
``database_url``); the last ones send raw bytes to real gunicorn with the contrib settings,
directly and through the contrib nginx.
"""

from __future__ import annotations

import json

import pytest

from dolibarr_webhooks.fastjson import MAX_DEPTH
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET

URL = f"/webhook/{SECRET}"


def nested(depth: int) -> bytes:
    """A BILL_PAYED body whose object holds lists ``depth`` levels deep, counting the body itself."""
    inner = depth - 2  # the body is level 1, the object level 2
    return b'{"triggercode":"BILL_PAYED","object":{"lines":' + b"[" * inner + b"1" + b"]" * inner + b"}}"


def stored(app, event_id):
    return app.extensions["dolibarr_webhooks"].store.show(event_id)


def test_lone_surrogates_are_stored_as_sent(webhooks_app, webhooks_client, deliver):
    # PHP never writes a lone surrogate; json decodes one, and no database takes it as text.
    body = b'{"triggercode":"BILL_PAYED","object":{"id":7,"ref":"FA\\ud800","note":"a\\udfffb","\\udc00":[1]}}'
    response = webhooks_client.post(URL, data=body)
    assert response.status_code == 200, response.json
    row = stored(webhooks_app, response.json["id"])
    assert row["status"] == "accepted"
    assert row["payload"]["object"] == json.loads(body)["object"], "the object is kept losslessly"
    assert row["ref"] == "FA\\ud800", "a column holds the escape"
    assert deliver(webhooks_app)["deliveries"]["delivered"] == 1


def test_a_lone_surrogate_in_the_trigger_code(webhooks_app, webhooks_client):
    response = webhooks_client.post(URL, data=b'{"triggercode":"BILL_PAYED\\ud800","object":{}}')
    assert response.status_code == 200, response.json
    assert stored(webhooks_app, response.json["id"])["sent_code"] == "BILL_PAYED\\ud800"


def test_nesting_as_deep_as_php_writes_is_stored(webhooks_app, webhooks_client, deliver):
    response = webhooks_client.post(URL, data=nested(MAX_DEPTH))
    assert response.status_code == 200, response.json
    assert stored(webhooks_app, response.json["id"])["payload"]["object"] == json.loads(nested(MAX_DEPTH))["object"]
    assert deliver(webhooks_app)["deliveries"]["delivered"] == 1


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deeper_nesting_is_quarantined(webhooks_app, webhooks_client, depth):
    response = webhooks_client.post(URL, data=nested(depth))
    assert response.status_code == 202 and response.json["status"] == "quarantined", response.json
    row = stored(webhooks_app, response.json["id"])
    assert row["status"] == "quarantined" and row["raw_body_size"] == len(nested(depth))
