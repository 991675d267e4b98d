"""Real gunicorn with contrib/gunicorn.conf.py and several workers, plus the worker process:
rate limits shared through Redis, metrics added up over every process, logs, and a
SIGTERM in the middle of traffic."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from dolibarr_webhooks.web.ratelimit import key_prefix
from dolibarr_webhooks.testing import running_service, wait_for
from production_helpers import (DOLIBARR_HEADERS, GUNICORN_CONF, Load, body, missing_from_store,
                                plain_app_under_gunicorn, production_env, service_logs)

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379"


def post(url: str, data: bytes, **kwargs) -> requests.Response:
    headers = {**DOLIBARR_HEADERS, **kwargs.pop("headers", {})}
    return requests.post(url, data=data, headers=headers, timeout=kwargs.pop("timeout", 15), **kwargs)


@pytest.fixture
def redis_client():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield client
    client.close()


# -- rate limits -------------------------------------------------------------------------------
def test_rate_limit_per_source_and_per_client_shared_by_two_workers(tmp_path, redis_client):
    other_secret = "Hq4mT8vBn2XcZ6wLp9sRk3Jd7Fg"
    config = tmp_path / "sources.toml"
    config.write_text(f'[sources.other]\nsecret = "{other_secret}"\n')
    env = production_env(DOLIBARR_WEBHOOKS_RATELIMIT="5/minute", DOLIBARR_WEBHOOKS_RATELIMIT_STORAGE_URL=REDIS_URL,
                         DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1", DOLIBARR_WEBHOOKS_CONFIG=str(config))
    with running_service(env=env, workers=2, worker=False) as service:
        prefix = key_prefix(service.env["DOLIBARR_WEBHOOKS_DATABASE_URL"])
        try:
            default_url, other_url = service.webhook_url, f"{service.url}/webhook/{other_secret}"
            client_a, client_b = {"X-Forwarded-For": "10.0.0.1"}, {"X-Forwarded-For": "10.0.0.2"}

            # Ten requests from one client for one source, spread over two workers: exactly five pass.
            answers = [post(default_url, body("BILL_PAYED", n), headers=client_a) for n in range(10)]
            statuses = [a.status_code for a in answers]
            assert statuses == [200] * 5 + [429] * 5, statuses
            refused = answers[-1]
            assert 0 < int(refused.headers["Retry-After"]) <= 60
            assert refused.headers["Content-Type"] == "application/json"
            assert refused.json()["error"] == "too_many_requests"
            assert "Retry-After" not in answers[0].headers

            # Another client, the same source: the source's budget is spent.
            assert post(default_url, body("BILL_PAYED", 100), headers=client_b).status_code == 429
            # Another client and another source: both budgets are fresh.
            assert post(other_url, body("BILL_PAYED", 101), headers=client_b).status_code == 200
            # The first client on the other source: valid credentials only count against their
            # source, never against the client's address.
            assert post(other_url, body("BILL_PAYED", 102), headers=client_a).status_code == 200
            # Refused requests from one address are counted on their own, in both workers.
            wrong = f"{service.url}/webhook/wrong-secret-0123456789"
            failures = [post(wrong, body("BILL_PAYED", 200 + n), headers={"X-Forwarded-For": "10.0.0.3"}).status_code
                        for n in range(7)]
            assert failures == [401] * 5 + [429] * 2, failures
            assert post(other_url, body("BILL_PAYED", 103), headers={"X-Forwarded-For": "10.0.0.3"}).status_code == 200
            assert requests.get(f"{service.url}/health", timeout=5).status_code == 200

            keys = list(redis_client.scan_iter(f"*{prefix}*"))
            assert keys, "the counters live in Redis, under this deployment's prefix"
        finally:
            for key in redis_client.scan_iter(f"*{prefix}*"):
                redis_client.delete(key)


# -- metrics -----------------------------------------------------------------------------------
def scrape(url: str, **kwargs) -> dict:
    response = requests.get(f"{url}/metrics", timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _trickle(data: bytes, seconds: float, parts: int = 10):
    """A body sent in parts over ``seconds``: the request holds a worker's thread meanwhile."""
    size = len(data) // parts + 1
    for start in range(0, len(data), size):
        yield data[start:start + size]
        time.sleep(seconds / parts)


def _parent(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def test_metrics_add_up_every_gunicorn_worker_and_the_worker_process(tmp_path):
    metrics_dir = tmp_path / "metrics"
    env = production_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), DOLIBARR_WEBHOOKS_MAX_BODY_SIZE="64KiB",
                         DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1", DOLIBARR_WEBHOOKS_ALLOWED_IPS="127.0.0.0/8",
                         DOLIBARR_WEBHOOKS_METRICS_TOKEN="metrics-token-0123456789")
    with running_service(env=env, workers=2) as service:
        url, hook = service.url, service.webhook_url
        with ThreadPoolExecutor(max_workers=1) as pool:
            # One worker reads a slow upload meanwhile the other answers the rest: both count.
            slow = pool.submit(post, hook, _trickle(body("COMPANY_CREATE", 5), seconds=5))
            time.sleep(0.3)
            sent = {
                (200, "accepted"): [post(hook, body(code, n)) for n, code in
                                    enumerate(["BILL_PAYED"] * 3 + ["COMPANY_CREATE"] * 2)],
                (200, "duplicate"): [post(hook, body("BILL_PAYED", 0)) for _ in range(2)],
                (202, "quarantined"): [post(hook, b"<html>not json</html>")],
                (422, "no_trigger_code"): [post(hook, b'{"object": {"id": 1}}')],
                (413, "request_entity_too_large"): [post(hook, b"x" * 100_000)],
                (401, "auth"): [post(f"{url}/webhook/wrong-secret-0123456789", body("BILL_PAYED", 9))
                                for _ in range(2)],
                (403, "ip"): [post(hook, body("BILL_PAYED", 8), headers={"X-Forwarded-For": "10.9.9.9"})],
                (404, "not_found"): [requests.get(f"{url}/nothing-here", timeout=5) for _ in range(2)],
                (405, "method_not_allowed"): [requests.get(hook, timeout=5)],
            }
            assert not slow.done(), "the slow upload must still hold its worker"
            sent[(200, "accepted")].append(slow.result(timeout=20))
        for (status, reason), answers in sent.items():
            assert [a.status_code for a in answers] == [status] * len(answers), (reason, [a.text for a in answers])
        service.wait_delivered(6, plugin="log")

        assert requests.get(f"{url}/metrics", timeout=5).status_code == 401
        auth = {"Authorization": "Bearer metrics-token-0123456789"}
        # Several scrapes land on both workers; each must see everything.
        scrapes = [scrape(url, headers=auth) for _ in range(6)]
        for metrics in scrapes:
            for (status, reason), answers in sent.items():
                key = ("dolibarr_webhooks_requests_total", (("reason", reason), ("status", str(status))))
                assert metrics.get(key) == len(answers), (key, metrics.get(key))
            events = {k[1]: v for k, v in metrics.items() if k[0] == "dolibarr_webhooks_events_total"}
            assert events == {(("code", "BILL_PAYED"), ("result", "accepted")): 3,
                              (("code", "COMPANY_CREATE"), ("result", "accepted")): 3,
                              (("code", "BILL_PAYED"), ("result", "duplicate")): 2,
                              (("code", "-"), ("result", "quarantined")): 1}
            # Recorded by the separate worker process.
            assert metrics[("dolibarr_webhooks_deliveries_total", (("outcome", "delivered"), ("plugin", "log")))] == 6
            assert metrics[("dolibarr_webhooks_handler_seconds_count", (("plugin", "log"),))] == 6
            assert metrics[("dolibarr_webhooks_ack_seconds_count", ())] == 8
            # Delivered deliveries are counted above, as they happen; the queue gauges, read at
            # each scrape, count only what waits (a year of delivered rows would be a scan).
            assert ("dolibarr_webhooks_queue_depth", (("status", "delivered"),)) not in metrics
            assert metrics[("dolibarr_webhooks_queue_depth", (("status", "pending"),))] == 0
            assert metrics[("dolibarr_webhooks_oldest_pending_seconds", ())] == 0
            assert metrics[("dolibarr_webhooks_quarantined_events", ())] == 1
            assert metrics[("dolibarr_webhooks_store_up", ())] == 1
        pids = {int(m.group(1)) for p in metrics_dir.glob("counter_*.db") if (m := re.search(r"_(\d+)\.db$", p.name))}
        web_workers = {pid for pid in pids if _parent(pid) == service.processes["web"].pid}
        assert len(web_workers) == 2, f"both gunicorn workers counted requests: {sorted(pids)}"
        assert service.processes["worker"].pid in pids, "the worker process counted deliveries"
        metrics = scrapes[-1]
        total = int(metrics[("dolibarr_webhooks_ack_seconds_count", ())])
        fast = int(metrics[("dolibarr_webhooks_ack_seconds_bucket", (("le", "0.05"),))])
        within_1s = int(metrics[("dolibarr_webhooks_ack_seconds_bucket", (("le", "1.0"),))])
        assert within_1s >= total - 1, "all but the slow upload are acknowledged within a second"
        print(f"\nacknowledged within 50 ms: {fast} of {total} (one is the 5 s upload); "
              f"web workers {sorted(web_workers)} and worker {service.processes['worker'].pid} added up")


# -- logs ----------------------------------------------------------------------------------------
def _post_secrets_every_way(service) -> list[requests.Response]:
    import base64

    secret = service.secret
    basic = base64.b64encode(f"dolibarr:{secret}".encode()).decode()
    return [
        post(service.webhook_url, body("BILL_PAYED", 1), headers={"X-Request-Id": "rid-path"}),
        post(f"{service.url}/webhook?token={secret}", body("BILL_PAYED", 2), headers={"X-Request-Id": "rid-query"}),
        post(f"{service.url}/webhook", body("BILL_PAYED", 3), headers={"Authorization": f"Basic {basic}"}),
        post(f"{service.url}/webhook", body("BILL_PAYED", 4), headers={"Authorization": f"Bearer {secret}"}),
        post(f"{service.url}/webhooks/{secret}", b"{}"),  # a mistyped URL: 404
        post(f"{service.url}/webhook/{secret}x", b"{}"),  # a wrong secret: 401
    ]


def _logs_of_requests_every_way(**env: str) -> tuple[list[requests.Response], str, str]:
    """The production service's answers to ``_post_secrets_every_way``, its logs once the
    events are delivered, and its secret."""
    with running_service(env=production_env(**env), workers=2) as service:
        answers = _post_secrets_every_way(service)
        assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 401]
        service.wait_delivered(4, plugin="log")
        time.sleep(0.3)
        return answers, service_logs(service), service.secret


def test_json_logs_carry_request_ids_and_no_secret(tmp_path):
    # gunicorn's access log asked for beside the application's: both lines, in one JSON format.
    answers, text, secret = _logs_of_requests_every_way(DOLIBARR_WEBHOOKS_LOG_FORMAT="json", GUNICORN_ACCESSLOG="-")
    assert answers[0].headers["X-Request-Id"] == "rid-path"
    basic = answers[2].request.headers["Authorization"].split()[1]
    assert secret not in text and basic not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert {line["logger"] for line in lines} >= {"dolibarr_webhooks.access", "gunicorn.access", "gunicorn.error"}
    app_access = [line for line in lines if line["logger"] == "dolibarr_webhooks.access"]
    gunicorn_access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert len(app_access) == len(gunicorn_access) == 6
    for line in app_access + gunicorn_access:
        assert line["request_id"] not in ("", "-"), line
    by_id = {line["request_id"]: line for line in app_access}
    assert by_id["rid-path"]["path"] == "/webhook/***" and by_id["rid-path"]["outcome"] == "accepted"
    assert by_id["rid-query"]["path"] == "/webhook?token=***"
    assert {line["path"] for line in gunicorn_access} >= {"/webhook/***", "/webhook?token=***", "/webhook"}
    assert any(line["logger"] == "dolibarr_webhooks.events" for line in lines), "the worker's lines, in JSON too"


def test_text_logs_follow_log_level_and_hide_secrets():
    _answers, text, secret = _logs_of_requests_every_way(DOLIBARR_WEBHOOKS_LOG_LEVEL="WARNING")
    assert secret not in text
    assert " INFO " not in text and "[INFO]" not in text, "LOG_LEVEL=WARNING: no info lines from the app or gunicorn"
    access = [line for line in text.splitlines() if line.startswith('127.0.0.1 "')]
    assert len(access) == 6, "at warning the application writes no access line: gunicorn's takes its place"
    assert '127.0.0.1 "POST /webhook/*** HTTP/1.1" 200' in text and "rid=rid-path" in text
    assert '"POST /webhook?token=*** HTTP/1.1" 200' in text


def test_one_access_line_per_request_at_the_default_level():
    """contrib's defaults: the application's line for each request, gunicorn's none (it would
    repeat it, for 7 % of the requests a second at 16 connections, issue #15)."""
    _answers, text, secret = _logs_of_requests_every_way()
    assert secret not in text
    app_access = [line for line in text.splitlines() if " dolibarr_webhooks.access: " in line]
    assert len(app_access) == 6, text
    assert not [line for line in text.splitlines() if line.startswith('127.0.0.1 "')], "no gunicorn access line"
    assert any("[rid-path] dolibarr_webhooks.access: POST /webhook/*** 200 accepted BILL_PAYED" in line
               for line in app_access), app_access


# -- SIGTERM under load -----------------------------------------------------------------------------
def test_sigterm_under_load_loses_no_acknowledged_event(tmp_path):
    with running_service(env=production_env(), workers=2, worker=False) as service:
        web = service.processes["web"]
        with ThreadPoolExecutor(max_workers=1) as pool:
            # Started first, while both workers are free, so a worker is reading it before the load
            # begins (a connection still waiting in the listen queue at SIGTERM is reset, not served,
            # unless systemd holds the socket: see the next test).
            slow = pool.submit(post, service.webhook_url, _trickle(body("COMPANY_CREATE", 424242), seconds=3, parts=20),
                               timeout=20)
            time.sleep(0.3)
            load = Load(service.webhook_url)
            time.sleep(1.5)
            before = len(load.acknowledged)
            signalled = time.monotonic()
            os.kill(web.pid, signal.SIGTERM)
            exit_code = web.wait(30)
            stopped_after = time.monotonic() - signalled
            time.sleep(0.3)
            load.stop()
            slow_answer = slow.result(timeout=30)

        assert exit_code == 0, service.logs()
        assert slow_answer.status_code == 200, slow_answer.text
        acknowledged = [*load.acknowledged, slow_answer.json()["id"]]
        assert before > 20, f"only {before} events before the signal: the load did not run"
        assert load.failures, "requests after the shutdown must fail (nothing listens any more)"
        missing = missing_from_store(service, acknowledged)
        assert not missing, f"{len(missing)} acknowledged events are not in the store: {missing[:5]}"
        print(f"\nSIGTERM under load: {len(acknowledged)} acknowledged events all stored ({before} before the signal), "
              f"{len(load.failures)} refused after it; gunicorn stopped {stopped_after:.2f}s after SIGTERM")
        wait_for(lambda: web.poll() is not None, 5, message="gunicorn exited")


def start_socket_activated(service, listener: socket.socket, name: str) -> subprocess.Popen:
    """gunicorn as systemd starts it under contrib/systemd/dolibarr-webhooks.socket: the
    listening socket inherited as descriptor 3, ``LISTEN_FDS=1``, ``LISTEN_PID`` its own pid."""
    fd = listener.fileno()
    # A Python trampoline, not sh: dash takes no descriptor above 9 in a redirection.
    trampoline = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                  "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])")
    command = [str(service.python), "-c", trampoline, str(fd), str(service.bin / "gunicorn"),
               "-w", "2", "--graceful-timeout", "10", "dolibarr_webhooks:create_app()"]
    with open(service.workdir / f"{name}.log", "ab") as log:
        process = subprocess.Popen(command, cwd=service.workdir, env=service.env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(fd,))
    service.processes[name] = process
    return process


def test_restart_under_load_refuses_nothing_while_systemd_holds_the_socket(tmp_path):
    """``systemctl restart`` (or a crash and Restart=on-failure) in the middle of traffic: the
    requests that arrive while no gunicorn runs wait in the socket's queue and are answered by
    the next one. Dolibarr sees a slower answer, never a refused connection."""
    with running_service(env=production_env(), worker=False) as service:
        service.stop("web")  # replaced by gunicorn on a socket held here, as systemd holds it
        with socket.create_server(("127.0.0.1", service.port), backlog=socket.SOMAXCONN) as listener:
            first = start_socket_activated(service, listener, "web")
            # The socket queues this request while gunicorn boots: one patient request is the wait.
            assert requests.get(service.url + "/health", timeout=30).ok, service.logs()
            load = Load(service.webhook_url)
            try:
                time.sleep(1.5)
                before = len(load.acknowledged)
                os.kill(first.pid, signal.SIGTERM)  # to the master only, as KillMode=mixed does
                exit_code = first.wait(30)
                restarted = len(load.acknowledged)
                second = start_socket_activated(service, listener, "web-restarted")
                wait_for(lambda: len(load.acknowledged) > restarted + 50, 30,
                         message=lambda: f"no answers after the restart\n{service.logs()}")
            finally:
                load.stop()
            after = len(load.acknowledged) - restarted

        assert exit_code == 0, service.logs()
        assert second.poll() is None, service.logs()
        assert before > 20, f"only {before} events before the restart: the load did not run"
        assert not load.failures, f"{len(load.failures)} requests failed across the restart: {load.failures[:10]}"
        missing = missing_from_store(service, load.acknowledged)
        assert not missing, f"{len(missing)} acknowledged events are not in the store: {missing[:5]}"
        print(f"\nrestart under load, socket held: {len(load.acknowledged)} acknowledged and stored, "
              f"{after} by the new gunicorn, none refused; slowest answer {load.slowest:.2f}s")


def test_the_production_configuration_serves_another_wsgi_application(tmp_path):
    """contrib/gunicorn.conf.py's post_worker_init looks for our service on the application: an
    application that is not ours (a health app, ours under middleware, the benchmarks' floors)
    must still boot, with a warning when an embedded worker was asked for, not exit."""
    source = ("def app(environ, start_response):\n"
              "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
              "    return [b'plain']\n")
    with plain_app_under_gunicorn(tmp_path, source, "-c", str(GUNICORN_CONF), DOLIBARR_WEBHOOKS_EMBEDDED_WORKER="1",
                                  DOLIBARR_WEBHOOKS_DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
                                  GUNICORN_ACCESSLOG="") as served:
        assert served.answer.text == "plain"
    assert "Exception in worker process" not in served.output, served.output
    assert "no delivery worker started" in served.output, served.output
