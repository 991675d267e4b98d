"""/health, /ready and /metrics of one application, in this process."""

from __future__ import annotations

import json
import logging
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder

from dolibarr_webhooks import create_app
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.store import SCHEMA_VERSION
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/x"


def samples(client, path="/metrics", **kwargs) -> dict:
    response = client.get(path, **kwargs)
    assert response.status_code == 200, response.data
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.data.decode()) for s in family.samples}


@pytest.fixture
def app_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    apps = []

    def make(**config):
        app = create_app({"SECRET": WEBHOOKS_TEST_SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/w.sqlite3",
                          "SQLITE_SYNCHRONOUS": "normal", **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dolibarr_webhooks"].store.dispose()


def test_ready_when_the_store_answers_and_is_migrated(webhooks_client):
    response = webhooks_client.get("/ready")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ready"
    assert response.json["checks"] == {"store": True, "schema": True, "writes": True, "plugins": True}
    assert response.json["plugins"]["log"] == "enabled"
    assert response.headers["Cache-Control"] == "no-store"


def test_a_store_that_cannot_be_reached(app_for, monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "5")
    app = app_for(DATABASE_URL=UNREACHABLE, AUTO_MIGRATE=False)  # start-up does not touch the store
    client = app.test_client()
    assert client.get("/health").status_code == 200, "liveness does not depend on the store"
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json["checks"]["store"] is False and response.json["status"] == "not_ready"
    assert response.json["problems"]["store"]
    posted = client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=sample_body("BILL_PAYED"))
    assert posted.status_code == 503 and posted.json["error"] == "store_unavailable"
    metrics = samples(client)
    assert metrics[("dolibarr_webhooks_store_up", ())] == 0
    assert metrics[("dolibarr_webhooks_requests_total", (("reason", "store"), ("status", "503")))] == 1


def test_a_store_that_is_not_migrated(app_for):
    app = app_for(AUTO_MIGRATE=False)
    client = app.test_client()
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json["checks"] == {"store": True, "schema": False, "writes": False, "plugins": True}
    assert "dolibarr-webhooks migrate" in response.json["problems"]["schema"]
    app.extensions["dolibarr_webhooks"].store.migrate()
    assert client.get("/ready").status_code == 200
    assert app.extensions["dolibarr_webhooks"].store.schema_version() == SCHEMA_VERSION


def test_every_answer_is_counted_with_a_reason(app_for):
    # Three answers spend the source's budget; the 401 is counted in the failures' bucket.
    app = app_for(MAX_BODY_SIZE="64KiB", RATELIMIT="3/minute")
    client = app.test_client()
    url = f"/webhook/{WEBHOOKS_TEST_SECRET}"
    assert client.post(url, data=sample_body("BILL_PAYED")).status_code == 200
    assert client.post(url, data=b'{"object": {}}').status_code == 422
    assert client.post(url, data=b"x" * 100_000).status_code == 413
    assert client.post("/webhook/wrong-secret-0123456789").status_code == 401
    assert client.post(url, data=sample_body("BILL_PAYED")).status_code == 429
    assert client.get("/nothing-here").status_code == 404
    assert client.get(url).status_code == 405
    metrics = samples(client)

    def requests(status, reason):
        return metrics.get(("dolibarr_webhooks_requests_total", (("reason", reason), ("status", str(status)))), 0)

    assert requests(200, "accepted") == 1
    assert requests(422, "no_trigger_code") == 1
    assert requests(413, "request_entity_too_large") == 1
    assert requests(401, "auth") == 1
    assert requests(429, "too_many_requests") == 1
    assert requests(404, "not_found") == 1
    assert requests(405, "method_not_allowed") == 1
    assert metrics[("dolibarr_webhooks_events_total", (("code", "BILL_PAYED"), ("result", "accepted")))] == 1
    assert metrics[("dolibarr_webhooks_ack_seconds_count", ())] == 1
    assert metrics[("dolibarr_webhooks_queue_depth", (("status", "pending"),))] == 1


def test_a_429_carries_retry_after_and_json(app_for):
    client = app_for(RATELIMIT="2/minute").test_client()
    url = f"/webhook/{WEBHOOKS_TEST_SECRET}"
    answers = [client.post(url, data=sample_body("COMPANY_CREATE")) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert "Retry-After" not in answers[0].headers, "Retry-After only means something on a 429"
    refused = answers[-1]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.json["error"] == "too_many_requests" and "2/minute" in refused.json["message"]
    assert client.get("/health").status_code == 200, "only the webhook routes are limited"


def test_metrics_token(app_for):
    client = app_for(METRICS_TOKEN="metrics-token-0123456789").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic metrics-token-0123456789"}).status_code == 401
    assert samples(client, headers={"Authorization": "Bearer metrics-token-0123456789"})
    assert app_for(METRICS=False).test_client().get("/metrics").status_code == 404


def test_request_id_in_and_out(app_for):
    client = app_for().test_client()
    given = client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=sample_body("BILL_PAYED"),
                        headers={"X-Request-Id": "dolibarr-0042"})
    assert given.headers["X-Request-Id"] == "dolibarr-0042"
    for odd in ("bad id with spaces", "x" * 65, "<script>"):
        made = client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=sample_body("BILL_PAYED"),
                           headers={"X-Request-Id": odd})
        assert made.headers["X-Request-Id"].isalnum() and len(made.headers["X-Request-Id"]) == 16
    assert client.get("/nothing-here").headers["X-Request-Id"]


def test_log_lines_carry_the_request_id_and_no_secret(app_for, capfd):
    app = app_for(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    client = app.test_client()
    capfd.readouterr()
    client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}?token={WEBHOOKS_TEST_SECRET}", data=sample_body("BILL_PAYED"),
                headers={"X-Request-Id": "rid-1"})
    logging.getLogger("dolibarr_webhooks.test").warning("a careless message with %s", WEBHOOKS_TEST_SECRET)
    err = capfd.readouterr().err
    assert WEBHOOKS_TEST_SECRET not in err
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "dolibarr_webhooks.access"]
    assert access and access[0]["request_id"] == "rid-1" and access[0]["path"] == "/webhook/***?token=***"
    assert any(line["message"] == "a careless message with ***" for line in lines)


def test_the_access_line_is_written_once_the_answer_is_sent(app_for, capfd):
    """A WSGI server closes the response after its last byte (gunicorn, werkzeug's server):
    the line is formatted and written then, not while the client waits for its answer."""
    app = app_for(LOG_FORMAT="json")
    environ = EnvironBuilder(path=f"/webhook/{WEBHOOKS_TEST_SECRET}", method="POST", data=sample_body("BILL_PAYED"),
                             headers={"X-Request-Id": "rid-2"}).get_environ()
    capfd.readouterr()
    started = []
    answer = app(environ, lambda status, headers, exc_info=None: started.append(status))
    body = b"".join(answer)
    assert started == ["200 OK"] and json.loads(body)["status"] == "accepted"
    assert "dolibarr_webhooks.access" not in capfd.readouterr().err, "written before the answer was sent"
    answer.close()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "dolibarr_webhooks.access"]
    assert len(access) == 1, lines
    assert access[0]["request_id"] == "rid-2" and access[0]["status"] == 200 and access[0]["outcome"] == "accepted"
    assert access[0]["trigger_code"] == "BILL_PAYED" and access[0]["path"] == "/webhook/***"


# -- the rate limiter ---------------------------------------------------------------------------
REDIS_URL = "redis://127.0.0.1:6379"


@pytest.fixture
def redis_url():
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_failures_from_dolibarrs_address_never_refuse_its_real_events(app_for, request, tmp_path, storage):
    # Each run its own database, so its own counters in Redis (the prefix comes from the store's URL).
    config = {"RATELIMIT": "5/minute", "DATABASE_URL": f"sqlite:///{tmp_path}/{storage}.sqlite3"}
    if storage == "redis":
        config["RATELIMIT_STORAGE_URL"] = request.getfixturevalue("redis_url")
    client = app_for(**config).test_client()
    wrong = [client.post("/webhook/wrong-secret-0123456789", data=sample_body("BILL_PAYED")).status_code
             for _ in range(12)]
    assert wrong == [401] * 5 + [429] * 7, wrong
    url = f"/webhook/{WEBHOOKS_TEST_SECRET}"
    real = [client.post(url, data=sample_body(code)).status_code
            for code in ("BILL_VALIDATE", "BILL_PAYED", "COMPANY_CREATE", "ORDER_VALIDATE", "PROPAL_CLOSE_SIGNED")]
    assert real == [200] * 5, "valid credentials are never refused for the address's failures"
    assert client.post(url, data=sample_body("PRODUCT_CREATE")).status_code == 429, "the source's own budget"


def test_an_unreachable_limiter_store_is_logged_once_and_shown_in_ready(app_for, capsys):
    client = app_for(RATELIMIT="600/minute", RATELIMIT_STORAGE_URL="redis://127.0.0.1:1").test_client()
    url = f"/webhook/{WEBHOOKS_TEST_SECRET}"
    answers = [client.post(url, data=sample_body(code)).status_code
               for code in ("BILL_VALIDATE", "BILL_PAYED", "COMPANY_CREATE")]
    assert answers == [200] * 3, "events are let through"
    logged = capsys.readouterr().err
    assert logged.count("falling back to in-memory storage") == 1, logged
    ready = client.get("/ready")
    assert ready.status_code == 200, "the limiter's store does not decide readiness"
    assert ready.json["ratelimit"]["reachable"] is False
    assert "127.0.0.1:1 does not answer" in ready.json["ratelimit"]["problem"]


def test_ready_shows_a_reachable_limiter_store(app_for, redis_url):
    ready = app_for(RATELIMIT="600/minute", RATELIMIT_STORAGE_URL=redis_url).test_client().get("/ready")
    assert ready.status_code == 200
    assert ready.json["ratelimit"] == {"storage": redis_url, "shared": True, "reachable": True}
    ready = app_for(RATELIMIT="600/minute").test_client().get("/ready")
    assert ready.json["ratelimit"] == {"storage": "memory://", "shared": False}
