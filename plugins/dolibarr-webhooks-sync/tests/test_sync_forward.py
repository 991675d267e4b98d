"""Forwarding to a real local receiver that verifies with the ``standardwebhooks`` library."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import dolibarr_webhooks_sync as sync
from dolibarr_webhooks import PermanentFailure, RetryLater


def test_forwarded_request_verifies_with_standardwebhooks(receiver, sync_config, make_event):
    event = make_event("BILL_PAYED")
    settings = sync.read_settings(config=sync_config(headers={"X-Tenant": "acme", "Authorization": "Bearer t0k"}))
    sync.handle_event(event=event, settings=settings)

    (request,) = receiver.requests
    assert request.verified, request.error
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("dolibarr-webhooks-sync/")
    # Extra headers arrive as configured.
    assert request.headers["x-tenant"] == "acme"
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert request.headers["webhook-signature"].startswith("v1,")

    # The documented body: type, timestamp, data = event fields + object.
    message = request.payload
    assert message == json.loads(request.body)
    assert message["type"] == "BILL_PAYED"
    assert datetime.fromisoformat(message["timestamp"]) == event.received_at
    data = message["data"]
    assert data["id"] == event.id
    assert data["trigger_code"] == "BILL_PAYED"
    assert (data["element"], data["object_id"], data["ref"]) == ("facture", "311", "FA2611-0042")
    assert data["card_url"] == "https://erp.example/compta/facture/card.php?facid=311"
    assert data["enriched"] is False
    assert data["object"] == event.object
    assert "db" not in json.dumps(data["object"])  # Dolibarr's database handler stays scrubbed


def test_a_forged_lone_surrogate_is_forwarded_as_its_escape(receiver, sync_config):
    """Dolibarr never sends one; the service keeps what a forged body carries, and the plugin
    sends it on as the escape it came as, not a UnicodeEncodeError retried until dead."""
    from dolibarr_webhooks.pipeline.parse import event_from_body

    event = event_from_body(b'{"triggercode":"BILL_PAYED","object":{"id":7,"note":"a\\udfffb","\\ud800":[1]}}')
    sync.handle_event(event=event, settings=sync.read_settings(config=sync_config()))
    (request,) = receiver.requests
    assert request.verified, request.error
    assert b"a\\udfffb" in request.body
    assert request.payload["data"]["object"] == {"id": 7, "note": "a\udfffb", "\ud800": [1]}


def test_wrong_secret_fails_verification(receiver, sync_config, make_event):
    other = "whsec_" + "QUJD" * 8
    with pytest.raises(PermanentFailure, match="401"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=sync.read_settings(config=sync_config(secret=other)))
    (request,) = receiver.requests
    assert not request.verified
    assert "No matching signature" in request.error


def test_raw_secret_verifies_with_its_bytes(receiver, sync_config, make_event):
    receiver.secret = "a raw shared secret".encode()
    settings = sync.read_settings(config=sync_config(secret="a raw shared secret"))
    sync.handle_event(event=make_event("COMPANY_CREATE"), settings=settings)
    (request,) = receiver.requests
    assert request.verified, request.error
    assert request.payload["type"] == "COMPANY_CREATE"


def test_webhook_id_is_stable_across_retries_and_distinct_per_endpoint(secret, receiver, make_event):
    event = make_event("BILL_PAYED")
    config = {"endpoints": [
        {"name": "erp2", "url": receiver.url("/status/500"), "secret": secret},
        {"name": "bi", "url": receiver.url("/hook"), "secret": secret},
    ]}
    for _ in range(2):  # the worker's retry calls the hook again with the same event
        with pytest.raises(sync.DeliveryError, match="erp2"):
            sync.handle_event(event=event, settings=sync.read_settings(config=config))
    ids = [(r.path, r.headers["webhook-id"]) for r in receiver.requests]
    assert len(ids) == 4
    assert ids[0] == ids[2] and ids[1] == ids[3]
    assert ids[0][1] != ids[1][1]
    assert all(r.verified for r in receiver.requests)
    # Another event gets another id.
    settings = sync.read_settings(config={"url": receiver.url(), "secret": secret})
    sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert receiver.requests[-1].headers["webhook-id"] not in {i for _, i in ids}


@pytest.mark.parametrize(("path", "outcome"), [
    ("/status/200", None),
    ("/status/204", None),
    ("/status/400", PermanentFailure),
    ("/status/404", PermanentFailure),
    ("/status/410", PermanentFailure),
    ("/status/302?location=https://elsewhere.example/", PermanentFailure),
    ("/status/408", sync.DeliveryError),
    ("/status/429", sync.DeliveryError),
    ("/status/429?retry_after=7", RetryLater),
    ("/status/500", sync.DeliveryError),
    ("/status/502", sync.DeliveryError),
    ("/status/503", sync.DeliveryError),
    ("/status/503?retry_after=120", RetryLater),
])
def test_status_codes(receiver, sync_config, make_event, path, outcome):
    event = make_event("BILL_PAYED")
    if outcome is None:
        sync.handle_event(event=event, settings=sync.read_settings(config=sync_config(path)))
    else:
        with pytest.raises(Exception) as info:
            sync.handle_event(event=event, settings=sync.read_settings(config=sync_config(path)))
        assert type(info.value) is outcome
        assert "endpoint default" in str(info.value)
        status = path.split("/")[2].split("?")[0]
        assert status in str(info.value)
        if outcome is RetryLater:
            assert info.value.after == float(path.rsplit("=", 1)[1])
    assert len(receiver.requests) == 1 and receiver.requests[0].verified


def test_retry_after_as_http_date(receiver, sync_config, make_event):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=90), usegmt=True)
    settings = sync.read_settings(config=sync_config(f"/status/429?retry_after={when}"))
    with pytest.raises(RetryLater) as info:
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert 80 <= info.value.after <= 90


def test_closed_port_is_retried(secret, closed_port_url, make_event):
    settings = sync.read_settings(config={"url": closed_port_url + "?token=s3cret", "secret": secret})
    with pytest.raises(sync.DeliveryError, match="ConnectionError"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)


def test_secret_in_the_url_stays_out_of_messages(secret, closed_port_url, make_event):
    settings = sync.read_settings(config={"url": closed_port_url + "?token=s3cret", "secret": secret})
    with pytest.raises(sync.DeliveryError) as info:
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert "s3cret" not in str(info.value)


def test_any_query_and_user_info_stay_out_of_messages(secret, receiver, make_event):
    # Azure Functions take their key as ?code=, a name the core's credential rule does not know.
    url = receiver.url("/status/400?code=azur3key").replace("://", "://erp:pa55word@")
    settings = sync.read_settings(config={"url": url, "secret": secret})
    with pytest.raises(PermanentFailure) as info:
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert "400" in str(info.value) and "/status/400?***" in str(info.value)
    assert "azur3key" not in str(info.value) and "pa55word" not in str(info.value)


def test_timeout_is_retried(receiver, sync_config, make_event):
    started = time.monotonic()
    settings = sync.read_settings(config=sync_config("/hook?sleep=2", timeout=0.3))
    with pytest.raises(sync.DeliveryError, match="Timeout"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert time.monotonic() - started < 1.5


def test_rules_route_events_to_endpoints(secret, receiver, make_event):
    config = {"endpoints": [
        {"name": "accounting", "url": receiver.url("/accounting"), "secret": secret, "events": ["INVOICE_*"]},
        {"name": "crm", "url": receiver.url("/crm"), "secret": secret, "events": ["COMPANY_*", "BILL_PAYED"]},
        {"name": "warehouse", "url": receiver.url("/warehouse"), "secret": secret, "events": ["PRODUCT_CREATE"]},
    ]}
    sync.handle_event(event=make_event("BILL_PAYED"), settings=sync.read_settings(config=config))
    sync.handle_event(event=make_event("COMPANY_CREATE"), settings=sync.read_settings(config=config))
    got = sorted((r.path, r.payload["type"]) for r in receiver.requests)
    assert got == [("/accounting", "BILL_PAYED"), ("/crm", "BILL_PAYED"), ("/crm", "COMPANY_CREATE")]


def test_one_failing_endpoint_does_not_stop_the_others(secret, receiver, make_event):
    event = make_event("BILL_PAYED")
    config = {"endpoints": [
        {"name": "broken", "url": receiver.url("/status/400"), "secret": secret},
        {"name": "busy", "url": receiver.url("/status/503?retry_after=30"), "secret": secret},
        {"name": "fine", "url": receiver.url("/fine"), "secret": secret},
    ]}
    # The busy endpoint may still succeed: the whole delivery is retried after its Retry-After.
    with pytest.raises(RetryLater) as info:
        sync.handle_event(event=event, settings=sync.read_settings(config=config))
    assert info.value.after == 30
    assert "broken" in str(info.value) and "busy" in str(info.value)
    assert [r.path for r in receiver.requests][-1] == "/fine"

    # Only permanent failures left: the delivery is dead.
    config["endpoints"].pop(1)
    with pytest.raises(PermanentFailure, match="broken"):
        sync.handle_event(event=event, settings=sync.read_settings(config=config))
