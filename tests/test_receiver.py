"""The HTTP edge, through Flask's test client: every answer, every error path."""

from __future__ import annotations

import base64
import json

import pytest

from dolibarr_webhooks.pipeline.verify import hmac_hex
from dolibarr_webhooks.samples import sample_body, sample_codes
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET

URL = f"/webhook/{SECRET}"


@pytest.fixture
def webhooks_config(tmp_path):
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'receiver.sqlite3'}"}


def stored(app, event_id):
    return app.extensions["dolibarr_webhooks"].store.show(event_id)


@pytest.mark.parametrize("code", sample_codes())
def test_samples_accepted_and_stored_scrubbed(webhooks_app, webhooks_client, code):
    response = webhooks_client.post(URL, data=sample_body(code), content_type="application/json")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "accepted" and response.json["trigger_code"] == code
    row = stored(webhooks_app, response.json["id"])
    assert row["trigger_code"] == code and "database_user" not in json.dumps(row["payload"])
    assert [d["plugin"] for d in row["deliveries"]] == ["log"]


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain",
                                          "content-type:application/json"])
def test_content_type_never_matters(webhooks_client, content_type):
    # Dolibarr 16 to 19.0.3 sent no JSON content type: curl then says form-urlencoded.
    headers = {"Content-Type": content_type} if content_type else {}
    response = webhooks_client.post(URL, data=sample_body("COMPANY_CREATE"), headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("how", ["path", "query", "bearer", "basic", "hmac"])
def test_every_credential(webhooks_client, how):
    body = sample_body("BILL_PAYED")
    url, headers = "/webhook", {}
    if how == "path":
        url = URL
    elif how == "query":
        url = f"/webhook?token={SECRET}"
    elif how == "bearer":
        headers["Authorization"] = f"Bearer {SECRET}"
    elif how == "basic":
        headers["Authorization"] = "Basic " + base64.b64encode(f"dolibarr:{SECRET}".encode()).decode()
    else:
        headers["X-Dolibarr-Signature"] = hmac_hex(SECRET, body)
    assert webhooks_client.post(url, data=body, headers=headers).status_code == 200


def test_errors_are_json_with_the_right_status(webhooks_client):
    cases = [
        (webhooks_client.post("/webhook", data=b"{}"), 401, "unauthorized"),
        (webhooks_client.post("/webhook/wrong-secret-0123456789", data=sample_body("BILL_PAYED")), 401, "unauthorized"),
        (webhooks_client.post(URL, data=b'{"object": {"id": 1}}'), 422, "no_trigger_code"),
        (webhooks_client.get("/webhook"), 405, "method_not_allowed"),
        (webhooks_client.put(URL, data=b"{}"), 405, "method_not_allowed"),
        (webhooks_client.get("/nothing/here"), 404, "not_found"),
    ]
    for response, status, error in cases:
        assert response.status_code == status
        assert response.is_json and response.json["error"] == error and response.json["status"] == status
        assert "Traceback" not in response.get_data(as_text=True)
    assert "/webhook/<secret>" in " ".join(cases[-1][0].json["endpoints"])
    assert cases[0][0].headers["WWW-Authenticate"].startswith("Bearer")


def test_unauthenticated_garbage_is_401_not_400(webhooks_client):
    assert webhooks_client.post("/webhook", data=b"{garbage").status_code == 401


@pytest.mark.parametrize("body", [b"", b"{truncated", b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000])
def test_authenticated_unparseable_body_is_kept_and_answered_202(webhooks_app, webhooks_client, body):
    # Dolibarr posts an empty body when json_encode fails; a 4xx would roll back the user's action.
    response = webhooks_client.post(URL, data=body)
    assert response.status_code == 202 and response.json["status"] == "quarantined"
    # An empty body cannot be fixed and parsed again: the warning does not send anyone to reprocess it.
    advice = "nothing to re-process" if body == b"" else f"dolibarr-webhooks reprocess {response.json['id']}"
    assert advice in response.json["warning"]
    row = stored(webhooks_app, response.json["id"])
    assert row["status"] == "quarantined" and row["raw_body_size"] == len(body) and row["deliveries"] == []


@pytest.mark.parametrize("webhooks_config", [{"STRICT": True}], indirect=False)
def test_strict_setting_answers_400(webhooks_client, webhooks_config):
    response = webhooks_client.post(URL, data=b"")
    assert response.status_code == 400 and response.json["error"] == "bad_request"


@pytest.mark.parametrize("webhooks_config", [{"MAX_BODY_SIZE": "1k"}])
def test_body_over_the_limit_is_413(webhooks_client):
    response = webhooks_client.post(URL, data=sample_body("BILL_PAYED"))
    assert response.status_code == 413 and response.json["error"] == "request_entity_too_large"


def test_megabyte_invoice_accepted(webhooks_client):
    body = json.loads(sample_body("BILL_VALIDATE"))
    line = body["object"]["lines"][0]
    body["object"]["lines"] = [dict(line, id=i) for i in range(2500)]  # about 10 MB with the db handlers
    raw = json.dumps(body).replace("/", "\\/").encode()
    assert len(raw) > 10_000_000
    response = webhooks_client.post(URL, data=raw)
    assert response.status_code == 200


@pytest.mark.parametrize("webhooks_config", [{"ALLOWED_IPS": "192.0.2.0/24"}])
def test_ip_allow_list(webhooks_client):
    ok = webhooks_client.post(URL, data=sample_body("BILL_PAYED"), environ_base={"REMOTE_ADDR": "192.0.2.9"})
    assert ok.status_code == 200
    refused = webhooks_client.post(URL, data=sample_body("BILL_PAYED"), environ_base={"REMOTE_ADDR": "198.51.100.2"})
    assert refused.status_code == 403 and refused.json["error"] == "forbidden"


@pytest.mark.parametrize("webhooks_config", [{"ALLOWED_IPS": "192.0.2.0/24", "TRUSTED_PROXIES": 1}])
def test_allow_list_behind_a_proxy(webhooks_client):
    via_proxy = {"REMOTE_ADDR": "127.0.0.1"}
    ok = webhooks_client.post(URL, data=sample_body("BILL_PAYED"), environ_base=via_proxy,
                              headers={"X-Forwarded-For": "192.0.2.9"})
    assert ok.status_code == 200
    forged = webhooks_client.post(URL, data=sample_body("BILL_PAYED"), environ_base=via_proxy,
                                  headers={"X-Forwarded-For": "192.0.2.9, 198.51.100.2"})
    assert forged.status_code == 403


@pytest.mark.parametrize("webhooks_config", [{"SECRET": ""}])
def test_fail_closed_without_secret(webhooks_client):
    response = webhooks_client.post("/webhook", data=sample_body("BILL_PAYED"))
    assert response.status_code == 401 and "no secret is configured" in response.json["message"]


@pytest.mark.parametrize("webhooks_config", [{"SECRET": "", "INSECURE_NO_AUTH": True}])
def test_explicit_insecure_opt_out(webhooks_client, caplog):
    assert webhooks_client.post("/webhook", data=sample_body("BILL_PAYED")).status_code == 200


def test_aliases_and_node_guide_body(webhooks_client):
    response = webhooks_client.post(URL, json={"event": "THIRDPARTY_CREATE", "data": {"id": 5, "name": "X"}})
    assert response.status_code == 200
    assert response.json["trigger_code"] == "COMPANY_CREATE" and response.json["sent_code"] == "THIRDPARTY_CREATE"


def test_unknown_code_accepted(webhooks_client):
    response = webhooks_client.post(URL, json={"triggercode": "MYMODULE_DONE", "object": {"id": 1}})
    assert response.status_code == 200 and response.json["deliveries"] == 1  # the log plugin takes everything


def test_duplicate_answered_2xx_not_dispatched(webhooks_client):
    first = webhooks_client.post(URL, data=sample_body("BILL_PAYED"))
    again = webhooks_client.post(URL, data=sample_body("BILL_PAYED"))
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert again.json["duplicate_of"] == first.json["id"]


def test_events_endpoint_is_authenticated(webhooks_client):
    assert webhooks_client.get("/webhook/events").status_code == 401
    response = webhooks_client.get("/webhook/events", headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 200
    codes = {row["code"]: row for row in response.json["events"]}
    assert codes["BILL_PAYED"]["plugins"] == ["log"] and codes["BILL_PAYED"]["label"] == "Invoice paid"
    assert {"catalogue", "log"} <= {p["name"] for p in response.json["plugins"]}
    assert webhooks_client.get(f"/webhook/{SECRET}/events").status_code == 200


def test_test_endpoint_runs_the_pipeline(webhooks_app, webhooks_client, deliver):
    assert webhooks_client.post("/webhook/test").status_code == 401
    response = webhooks_client.post(f"/webhook/test?token={SECRET}")
    assert response.status_code == 200 and response.json["test"] is True
    custom = webhooks_client.post(f"/webhook/{SECRET}/test", data=sample_body("BILL_PAYED"))
    assert custom.json["test"] is True and custom.json["trigger_code"] == "BILL_PAYED"
    stats = deliver(webhooks_app)
    assert stats["deliveries"]["delivered"] == 2
    assert stored(webhooks_app, custom.json["id"])["test"] is True


def test_health(webhooks_client):
    data = webhooks_client.get("/health").json
    assert data["status"] == "ok" and data["service"] == "dolibarr-webhooks"
    assert {"version", "uptime", "timestamp"} <= set(data)


def test_secret_never_logged(webhooks_client, capsys):
    webhooks_client.post(URL, data=sample_body("BILL_PAYED"))
    webhooks_client.post(f"/webhook?token={SECRET}", data=b"")
    webhooks_client.post("/webhook", data=b"{}", headers={"Authorization": f"Bearer {SECRET}"})
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "/webhook/***" in text and SECRET not in text
