"""Real nginx, with contrib/nginx/dolibarr-webhooks.conf, in front of real gunicorn with
contrib/gunicorn.conf.py: what Dolibarr sends gets through, addresses are the real ones,
and nothing secret is written to any log.

Clients use two loopback addresses: 127.0.0.1 (also nginx's own address towards gunicorn)
and 127.0.0.2, a "different client", so that the application can only see 127.0.0.2 if it
really reads the client address nginx passes on.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from http.server import BaseHTTPRequestHandler
from importlib.metadata import version

import pytest
import requests

from dolibarr_webhooks.samples import sample_body, sample_codes
from dolibarr_webhooks.settings import parse_duration
from dolibarr_webhooks.testing import local_http_server, running_service, wait_for
from production_helpers import (GUNICORN_CONF, NGINX_SITE, Load, Nginx, big_invoice, cli_json, dolibarr_post,
                                dolibarr_send, missing_from_store, production_env, require_tool, running_nginx,
                                service_logs, tcp_sockets, worker_pids)

pytestmark = pytest.mark.slow

OTHER_CLIENT = "127.0.0.2"
ADMIN_PASSWORD = "nginx dashboard password"


def test_nginx_accepts_the_contrib_site(tmp_path):
    require_tool("nginx", "nginx-light")
    nginx = Nginx(tmp_path, upstream_port=8080)
    result = nginx.test_config()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """gunicorn (2 workers) + worker + nginx; only 127.0.0.1 may post."""
    require_tool("nginx", "nginx-light")
    env = production_env(DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1", DOLIBARR_WEBHOOKS_ALLOWED_IPS="127.0.0.1/32",
                         DOLIBARR_WEBHOOKS_ADMIN_PASSWORD=ADMIN_PASSWORD)
    with running_service(env=env, workers=2) as service:
        with running_nginx(tmp_path_factory.mktemp("nginx"), service.port) as nginx:
            yield service, nginx


def webhook(nginx, service) -> str:
    return f"{nginx.https}/webhook/{service.secret}"


def test_dolibarr_samples_are_accepted_through_nginx(stack):
    service, nginx = stack
    session = nginx.session()
    for code in sample_codes():
        response = dolibarr_post(session, webhook(nginx, service), sample_body(code))
        assert response.status_code == 200, (code, response.text)
        assert response.json()["trigger_code"] == code
        assert response.headers["Strict-Transport-Security"]
        event = cli_json(service, "show", response.json()["id"])
        assert event["trigger_code"] == code
        assert event["remote_addr"] == "127.0.0.1"


def test_the_allow_list_sees_the_real_client_behind_nginx(stack):
    service, nginx = stack
    other = nginx.session(OTHER_CLIENT)
    # nginx itself is 127.0.0.1: if the application looked at the socket's address it would let this in.
    refused = dolibarr_post(other, webhook(nginx, service), sample_body("BILL_PAYED"))
    assert refused.status_code == 403 and f"address {OTHER_CLIENT} is not allowed" in refused.json()["message"]
    # A client writing the allowed address into the proxy headers does not get in either.
    for forged in ({"X-Forwarded-For": "127.0.0.1"}, {"X-Forwarded-For": "127.0.0.1, 127.0.0.1"},
                   {"X-Real-IP": "127.0.0.1"}, {"Forwarded": "for=127.0.0.1"}):
        response = dolibarr_post(other, webhook(nginx, service), sample_body("BILL_PAYED"), headers=forged)
        assert response.status_code == 403, (forged, response.text)


def test_a_forged_forwarded_for_is_not_recorded(stack):
    service, nginx = stack
    response = dolibarr_post(nginx.session(), webhook(nginx, service), sample_body("COMPANY_CREATE"),
                             headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 200, response.text
    assert cli_json(service, "show", response.json()["id"])["remote_addr"] == "127.0.0.1"


def test_another_allow_list(tmp_path):
    """A list without 127.0.0.1: nginx's own address is refused; the real client is recorded."""
    env = production_env(DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1",
                         DOLIBARR_WEBHOOKS_ALLOWED_IPS=f"10.0.0.0/8,{OTHER_CLIENT}/32")
    with running_service(env=env, workers=1, worker=False) as service, running_nginx(tmp_path, service.port) as nginx:
        url = webhook(nginx, service)
        assert dolibarr_post(nginx.session(), url, sample_body("BILL_PAYED")).status_code == 403
        forged = dolibarr_post(nginx.session(), url, sample_body("BILL_PAYED"), headers={"X-Forwarded-For": "10.1.2.3"})
        assert forged.status_code == 403
        accepted = dolibarr_post(nginx.session(OTHER_CLIENT), url, sample_body("BILL_PAYED"))
        assert accepted.status_code == 200, accepted.text
        assert cli_json(service, "show", accepted.json()["id"])["remote_addr"] == OTHER_CLIENT


def test_a_10_mb_invoice_passes_nginx_and_the_application(stack):
    service, nginx = stack
    body, lines = big_invoice(10 * 1024 * 1024, ref="(PROV10MB)")
    assert len(body) >= 10 * 1024 * 1024
    started = time.monotonic()
    response = dolibarr_post(nginx.session(), webhook(nginx, service), body)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert elapsed < 10, f"{len(body)} bytes took {elapsed:.1f}s; Dolibarr gives up at 30 s"
    event = cli_json(service, "show", response.json()["id"])
    assert event["trigger_code"] == "BILL_VALIDATE"
    assert len(event["payload"]["object"]["lines"]) == lines
    print(f"\n10 MB invoice ({len(body)} bytes, {lines} lines) through nginx and gunicorn: {elapsed:.2f}s")


def test_a_body_over_16_mib_is_refused_by_nginx_in_json(stack):
    service, nginx = stack
    body, _ = big_invoice(17 * 1024 * 1024)
    response = dolibarr_post(nginx.session(), webhook(nginx, service), body)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == "request_entity_too_large"


def test_only_the_public_endpoints_are_exposed(stack):
    service, nginx = stack
    local, other = nginx.session(), nginx.session(OTHER_CLIENT)
    for session in (local, other):
        assert session.get(f"{nginx.https}/health").status_code == 200
        for path in ("/", "/webhooks", "/metrics/extra", "/.env") + (("/admin",) if session is other else ()):
            response = session.get(nginx.https + path)
            assert response.status_code == 404 and response.json()["error"] == "not_found", path
    # Readiness and metrics: this host only; to anyone else they do not exist.
    assert local.get(f"{nginx.https}/ready").json()["status"] == "ready"
    assert "dolibarr_webhooks_requests_total" in local.get(f"{nginx.https}/metrics").text
    for path in ("/ready", "/metrics"):
        assert other.get(nginx.https + path).status_code == 404, path


def test_plain_http_is_redirected_to_https(stack):
    service, nginx = stack
    response = nginx.session().post(f"{nginx.http}/webhook/{service.secret}", data=sample_body("BILL_PAYED"),
                                    allow_redirects=False, timeout=10)
    assert response.status_code == 301, "Dolibarr follows 301 (and re-posts the body), not 308"
    assert response.headers["Location"] == f"https://127.0.0.1/webhook/{service.secret}"


def every_credential_form(session, base: str, secret: str) -> tuple[list, list[str]]:
    """One Dolibarr post for each way the secret can travel (path, ?token=, Basic with the
    secret as password or as user, Bearer); returns the answers and what no log may hold."""
    basic_password = base64.b64encode(f"dolibarr:{secret}".encode()).decode()
    basic_user = base64.b64encode(f"{secret}:x".encode()).decode()
    answers = [
        dolibarr_post(session, f"{base}/webhook/{secret}", sample_body("PRODUCT_CREATE")),
        dolibarr_post(session, f"{base}/webhook?token={secret}", sample_body("PROJECT_CREATE")),
        dolibarr_post(session, f"{base}/webhook", sample_body("ORDER_VALIDATE"),
                      headers={"Authorization": f"Basic {basic_password}"}),
        dolibarr_post(session, f"{base}/webhook", sample_body("PROPAL_CLOSE_SIGNED"),
                      headers={"Authorization": f"Basic {basic_user}"}),
        dolibarr_post(session, f"{base}/webhook", sample_body("BILL_PAYED"),
                      headers={"Authorization": f"Bearer {secret}"}),
    ]
    return answers, [secret, basic_password, basic_user]


def test_no_secret_in_any_log(stack):
    service, nginx = stack
    secret = service.secret
    session = nginx.session()
    sent, needles = every_credential_form(session, nginx.https, secret)
    sent += [
        dolibarr_post(session, f"{nginx.https}/webhook?a=1&token={secret}&b=2", sample_body("CONTACT_CREATE")),
        dolibarr_post(session, f"{nginx.https}/webhook/{secret}/test", b""),
        session.get(f"{nginx.https}/webhook/{secret}/events", timeout=10),
    ]
    assert [r.status_code for r in sent] == [200] * len(sent), [(r.status_code, r.text[:100]) for r in sent]
    # Mistakes an administrator makes: a wrong path, a wrong method, a body too large.
    mistakes = [
        session.post(f"{nginx.https}/webhooks/{secret}", data=b"{}", timeout=10),
        session.get(f"{nginx.https}/webhook/{secret}", timeout=10),
        dolibarr_post(session, f"{nginx.https}/webhook/{secret}", big_invoice(17 * 1024 * 1024)[0]),
    ]
    assert [r.status_code for r in mistakes] == [404, 405, 413]
    time.sleep(0.5)  # let the processes flush their last lines

    logs = {f"nginx {name}": text for name, text in nginx.logs().items()}
    logs["gunicorn and the application"] = app_log = service_logs(service)
    for name, text in logs.items():
        for needle in needles:
            assert needle not in text, f"{needle[:6]}... found in the {name} log:\n" + "\n".join(
                line for line in text.splitlines() if needle in line)
    access = logs["nginx dolibarr-webhooks.access.log"]
    assert '"POST /webhook/*** HTTP/1.1" 200' in access
    assert '"POST /webhook?*** HTTP/1.1" 200' in access
    assert '"GET /webhook/***/events HTTP/1.1" 200' in access
    assert '"POST /... HTTP/1.1" 404' in access
    # One request id from nginx to the application and back.
    rid = sent[0].headers["X-Request-Id"]
    assert f"rid={rid}" in access
    assert f"[{rid}] dolibarr_webhooks.access: POST /webhook/*** 200 " in app_log
    assert f"rid={rid}" not in app_log, "one access line a request behind nginx: the application's, not gunicorn's"


SYNC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class SyncReceiver(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):  # keep test output clean
        pass


def test_no_secret_in_any_log_with_hooks_traced_at_debug(tmp_path):
    """Every way a secret can reach the service, with every log at its most talkative: hook
    traces print each call's config (the sync plugin's whsec_ secret), gunicorn at debug
    prints request lines."""
    require_tool("nginx", "nginx-light")
    with local_http_server(SyncReceiver) as receiver:
        env = production_env(DOLIBARR_WEBHOOKS_TRACE_HOOKS="1", DOLIBARR_WEBHOOKS_LOG_LEVEL="debug",
                             DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1", DOLIBARR_WEBHOOKS_PLUGINS="sync,log",
                             DOLIBARR_WEBHOOKS_SYNC_URL=f"http://127.0.0.1:{receiver.server_port}/hook",
                             DOLIBARR_WEBHOOKS_SYNC_SECRET=SYNC_SECRET)
        with running_service(env=env, workers=2) as service, running_nginx(tmp_path / "nginx", service.port) as nginx:
            secret, session = service.secret, nginx.session()
            accepted, needles = every_credential_form(session, nginx.https, secret)
            assert [r.status_code for r in accepted] == [200] * 5, [r.text for r in accepted]
            # Names the service does not read: refused, and never logged either.
            for name in ("pwd", "x", "t", "secret", "password"):
                refused = dolibarr_post(session, f"{nginx.https}/webhook?{name}={secret}", sample_body("BILL_PAYED"))
                assert refused.status_code == 401
            # Direct to gunicorn too, without nginx's masking in front.
            direct = requests.post(f"{service.url}/webhook?x={secret}", data=sample_body("BILL_PAYED"), timeout=10)
            assert direct.status_code == 401
            service.wait_delivered(5, plugin="sync")
            time.sleep(0.5)  # let the processes flush their last lines
            logs = {f"nginx {name}": text for name, text in nginx.logs().items()}
            logs["gunicorn, the application and the worker"] = app_log = service_logs(service)
    assert "handle_event [hook]" in app_log and "config: {" in app_log and "[DEBUG]" in app_log, "traced"
    for name, text in logs.items():
        for needle in (*needles, SYNC_SECRET, SYNC_SECRET[len("whsec_"):]):
            assert needle not in text, f"{needle[:8]}... found in the {name} log:\n" + "\n".join(
                line for line in text.splitlines() if needle in line)


def test_request_ids_from_a_client_are_replaced_by_nginx(stack):
    service, nginx = stack
    response = dolibarr_post(nginx.session(), webhook(nginx, service), sample_body("BILL_PAYED"),
                             headers={"X-Request-Id": "client-chosen"})
    assert response.status_code == 200
    assert response.headers["X-Request-Id"] != "client-chosen" and len(response.headers["X-Request-Id"]) == 32


def _connections_to(port: int) -> set[int]:
    """The local ports of this machine's TCP connections to ``port``, in any state but
    listening (a closed one stays in TIME_WAIT for a minute): nginx's side of its
    connections to gunicorn."""
    return {local for local, remote, state, _inode in tcp_sockets() if remote == port and state != "0A"}


def test_nginx_keeps_its_connections_to_gunicorn(stack):
    """Dolibarr's curl posts each event on a new connection; nginx passes them on over the
    connection it keeps to gunicorn instead of opening one per request (which cost gunicorn
    a quarter more CPU a request: bench/behind_nginx.py)."""
    service, nginx = stack
    before = _connections_to(service.port)
    for _ in range(10):
        with nginx.session() as session:  # a new connection to nginx each time
            assert dolibarr_post(session, webhook(nginx, service), sample_body("BILL_PAYED")).status_code == 200
    opened = _connections_to(service.port) - before
    assert len(opened) <= 1, f"nginx opened {len(opened)} connections to gunicorn for 10 requests"


def _upstream_idle_timeout() -> float:
    upstream = re.search(r"^upstream dolibarr_webhooks \{(.*?)^\}", NGINX_SITE.read_text(), re.MULTILINE | re.DOTALL)
    return parse_duration(re.search(r"^\s*keepalive_timeout (\w+);", upstream.group(1), re.MULTILINE).group(1))


def test_nginx_closes_an_idle_connection_to_gunicorn_before_gunicorn_does():
    """Were gunicorn to close a kept connection just as nginx sends a POST on it, nginx would
    answer 502 and never send it again: a Dolibarr user's action fails. So nginx lets an idle
    one go first: before gunicorn's keepalive, and before a stopping worker closes its idle
    ones (gunicorn 24 and later keep them that long, answering with "Connection: close")."""
    nginx_idle = _upstream_idle_timeout()
    gunicorn_idle = int(re.search(r"^keepalive = (\d+)$", GUNICORN_CONF.read_text(), re.MULTILINE).group(1))
    assert 0 < nginx_idle <= gunicorn_idle / 2
    assert int(version("gunicorn").split(".")[0]) >= 24
    from gunicorn.workers import gthread

    assert nginx_idle <= getattr(gthread, "STOP_KEEPALIVE_LINGER", gunicorn_idle) / 2


def test_a_reload_under_load_through_nginx_fails_no_request(tmp_path):
    """``systemctl reload`` (HUP: new workers, then the old ones stop) twice while Dolibarr
    posts through nginx, which keeps its connections to the old workers: every request is
    answered 2xx and stored, none gets nginx's 502."""
    with running_service(env=production_env(DOLIBARR_WEBHOOKS_TRUSTED_PROXIES="1"), workers=2,
                         worker=False) as service, running_nginx(tmp_path, service.port) as nginx:
        master = service.processes["web"].pid
        # 8 clients at 5 posts a second each: under the site's flood limit (50 a second).
        load = Load(webhook(nginx, service), clients=8, session=nginx.session, pause=0.2)
        try:
            for _ in range(2):
                time.sleep(1.5)
                old = set(worker_pids(master))
                os.kill(master, signal.SIGHUP)
                wait_for(lambda: len(worker_pids(master)) == 2 and not old & set(worker_pids(master)), 30,
                         message=lambda: f"the old workers were not replaced\n{service.logs()}")
            answered = len(load.acknowledged)
            wait_for(lambda: len(load.acknowledged) > answered + 20, 10, message="no answers after the reloads")
        finally:
            load.stop()
        assert not load.failures, f"{len(load.failures)} requests failed across the reloads: {load.failures[:10]}"
        missing = missing_from_store(service, load.acknowledged)
        assert not missing, f"{len(missing)} acknowledged events are not in the store: {missing[:5]}"
        print(f"\ntwo reloads under load through nginx: {len(load.acknowledged)} acknowledged and stored, none failed; "
              f"slowest answer {load.slowest:.2f}s")


def test_nginx_stops_a_flood_with_a_json_429(stack):
    service, nginx = stack
    session = nginx.session(OTHER_CLIENT)  # the limit is per address: the other tests' client keeps its budget
    answers = [session.get(f"{nginx.https}/health", timeout=10) for _ in range(60)]
    statuses = [a.status_code for a in answers]
    assert statuses[:20] == [200] * 20, statuses  # the burst allowance of /health
    refused = [a for a in answers if a.status_code == 429]
    assert refused, statuses
    assert refused[0].json()["error"] == "too_many_requests" and refused[0].headers["Retry-After"] == "1"
    time.sleep(1.5)  # the bucket drains at 50 per second


@pytest.mark.parametrize("version", ["20", "22", "23"])
def test_dolibarr_php_curl_through_nginx(stack, tmp_path, version):
    service, nginx = stack
    payload = tmp_path / "BILL_PAYED.json"
    payload.write_bytes(sample_body("BILL_PAYED"))
    options = [f"--dolibarr={version}"] + (["--allow-localurl"] if version == "23" else [])
    report = dolibarr_send(webhook(nginx, service), payload, *options)
    assert report["success"] and report["http_code"] == 200, report
    # Basic credentials typed in the target URL (https://user:secret@host/webhook).
    basic = f"https://dolibarr:{service.secret}@127.0.0.1:{nginx.https_port}/webhook"
    assert dolibarr_send(basic, payload, *options)["success"]


def test_dolibarr_php_curl_sends_10_mb_through_nginx(stack, tmp_path):
    service, nginx = stack
    payload = tmp_path / "big.json"
    payload.write_bytes(big_invoice(10 * 1024 * 1024, ref="(PROVPHP)")[0])
    started = time.monotonic()
    report = dolibarr_send(webhook(nginx, service), payload, "--dolibarr=22")
    elapsed = time.monotonic() - started
    assert "Expect: 100-continue" in report["request_head"]
    assert report["success"], report
    print(f"\n10 MB invoice from PHP curl through nginx: {elapsed:.2f}s")


def test_the_dashboard_is_kept_to_the_office_network(stack):
    """The contrib site allows /admin/ from 127.0.0.1 (standing for the office) only; through
    nginx the application sees HTTPS, so its session cookie is Secure."""
    import re

    service, nginx = stack
    office = nginx.session()
    login_page = office.get(f"{nginx.https}/admin/login", timeout=10)
    assert login_page.status_code == 200 and "text/html" in login_page.headers["Content-Type"]
    assert "Secure" in login_page.headers["Set-Cookie"] and "HttpOnly" in login_page.headers["Set-Cookie"]
    token = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text).group(1)
    form = {"username": "admin", "password": ADMIN_PASSWORD, "csrf_token": token}
    logged = office.post(f"{nginx.https}/admin/login", data=form, timeout=10)
    assert logged.status_code == 200 and logged.url == f"{nginx.https}/admin/"
    outside = nginx.session(OTHER_CLIENT).get(f"{nginx.https}/admin/login", timeout=10)
    assert outside.status_code == 404 and outside.json()["error"] == "not_found"
    assert ADMIN_PASSWORD not in "".join(nginx.logs().values()) + service_logs(service)
