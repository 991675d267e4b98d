"""Enrichment: the committed object is read from a local server answering like Dolibarr's REST API."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest

import dolibarr_webhooks_sync as sync
from dolibarr_webhooks import PermanentFailure, RetryLater

DELAY = 0.2


@pytest.fixture
def enrich_config(sync_config, dolibarr):
    def make(**more):
        settings = {"dolibarr_api_url": dolibarr.url, "dolibarr_api_key": dolibarr.key,
                    "enrich_delay": DELAY, "enrich_attempts": 3}
        settings.update(more)
        return sync_config(**settings)

    return make


def test_object_is_read_once_committed(receiver, dolibarr, enrich_config, make_event):
    event = make_event("BILL_PAYED")
    dolibarr.pending["invoices/311"] = 2  # the first two reads come before Dolibarr's commit
    sync.handle_event(event=event, settings=sync.read_settings(config=enrich_config()))

    assert dolibarr.paths() == ["invoices/311"] * 3
    assert {key for _, _, key in dolibarr.hits} == {dolibarr.key}  # sent as the DOLAPIKEY header
    # The first read waits enrich_delay after reception, each 404 waits enrich_delay again.
    first, second, third = (at for at, _, _ in dolibarr.hits)
    assert second - first >= DELAY * 0.9 and third - second >= DELAY * 0.9

    (request,) = receiver.requests
    assert request.verified, request.error
    data = request.payload["data"]
    assert data["enriched"] is True
    assert data["object"] == {"id": "311", "ref": "COMMITTED-311", "status": "2", "paye": "1",
                              "resource": "invoices", "committed": True}
    assert data["id"] == event.id and data["object_id"] == "311"


def test_first_read_waits_the_delay_after_reception(dolibarr, enrich_config, make_event):
    event = make_event("BILL_PAYED", received_at=datetime.now(timezone.utc))
    started = time.monotonic()
    sync.handle_event(event=event, settings=sync.read_settings(config=enrich_config(enrich_delay=0.5)))
    ((at, _, _),) = dolibarr.hits
    assert at - started >= 0.45


def test_an_old_event_is_read_at_once(dolibarr, enrich_config, make_event):
    # A retry hours later: Dolibarr's transaction ended long ago, no reason to wait again.
    event = make_event("BILL_PAYED", received_at=datetime.now(timezone.utc) - timedelta(hours=3))
    started = time.monotonic()
    sync.handle_event(event=event, settings=sync.read_settings(config=enrich_config(enrich_delay=5)))
    assert time.monotonic() - started < 2
    assert dolibarr.paths() == ["invoices/311"]


def test_rolled_back_object_is_reported_not_forwarded(receiver, dolibarr, enrich_config, make_event, caplog):
    dolibarr.missing.add("invoices/311")
    with caplog.at_level(logging.WARNING, logger="dolibarr_webhooks_sync"):
        with pytest.raises(PermanentFailure, match="not found.*rolled back or it was deleted; not forwarded"):
            sync.handle_event(event=make_event("BILL_PAYED"), settings=sync.read_settings(config=enrich_config()))
    assert dolibarr.paths() == ["invoices/311"] * 3
    assert receiver.requests == []
    assert any("311" in r.getMessage() and "rolled back" in r.getMessage() for r in caplog.records)


def test_wrong_api_key_is_permanent(receiver, dolibarr, enrich_config, make_event):
    settings = sync.read_settings(config=enrich_config(dolibarr_api_key="wrong"))
    with pytest.raises(PermanentFailure, match="Dolibarr API.*401"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert dolibarr.hits[0][2] == "wrong"
    assert receiver.requests == []


@pytest.mark.parametrize(("status", "outcome"), [(403, PermanentFailure), (500, sync.DeliveryError),
                                                 (502, sync.DeliveryError), (400, PermanentFailure)])
def test_api_errors(receiver, dolibarr, enrich_config, make_event, status, outcome):
    dolibarr.failing["invoices/311"] = status
    with pytest.raises(Exception) as info:
        sync.handle_event(event=make_event("BILL_PAYED"), settings=sync.read_settings(config=enrich_config()))
    assert type(info.value) is outcome and str(status) in str(info.value)
    assert dolibarr.paths() == ["invoices/311"]  # only 404 is read again
    assert receiver.requests == []


def test_api_unreachable_is_retried(receiver, closed_port_url, enrich_config, make_event):
    settings = sync.read_settings(config=enrich_config(dolibarr_api_url=closed_port_url))
    with pytest.raises(sync.DeliveryError, match="Dolibarr API"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert receiver.requests == []


def test_api_answering_html_is_a_configuration_error(receiver, enrich_config, make_event):
    # A wrong dolibarr_api_url (a web page, not JSON) is not retried forever.
    settings = sync.read_settings(config=enrich_config(dolibarr_api_url=receiver.url("/not-api")))
    with pytest.raises(PermanentFailure, match="DOLIBARR_API_URL"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)


@pytest.mark.parametrize(("code", "path"), [
    ("BILL_PAYED", "invoices/311"),
    ("BILL_VALIDATE", "invoices/311"),
    ("COMPANY_CREATE", "thirdparties/42"),
    ("PROPAL_CLOSE_SIGNED", "proposals/88"),
    ("ORDER_VALIDATE", "orders/21"),
    ("PRODUCT_CREATE", "products/95"),
    ("PROJECT_CREATE", "projects/14"),
    ("CONTACT_CREATE", "contacts/118"),
])
def test_elements_map_to_api_resources(receiver, dolibarr, enrich_config, make_event, code, path):
    sync.handle_event(event=make_event(code), settings=sync.read_settings(config=enrich_config(enrich_delay=0)))
    assert dolibarr.paths() == [path]
    assert receiver.requests[0].payload["data"]["object"]["ref"] == "COMMITTED-" + path.split("/")[1]


@pytest.mark.parametrize("code", ["COMPANY_DELETE", "PAYMENT_CUSTOMER_CREATE", "TEST_TRIGGER_CODE"])
def test_deleted_and_unknown_objects_are_forwarded_as_sent(receiver, dolibarr, enrich_config, make_event, code):
    event = make_event(code)
    sync.handle_event(event=event, settings=sync.read_settings(config=enrich_config()))
    assert dolibarr.hits == []
    data = receiver.requests[0].payload["data"]
    assert data["enriched"] is False and data["object"] == event.object


def test_enrichment_is_per_endpoint(receiver, dolibarr, secret, make_event):
    config = {
        "dolibarr_api_url": dolibarr.url, "dolibarr_api_key": dolibarr.key, "enrich_delay": 0,
        "endpoints": [
            {"name": "erp2", "url": receiver.url("/erp2"), "secret": secret},
            {"name": "archive", "url": receiver.url("/archive"), "secret": secret, "enrich": False},
            {"name": "bi", "url": receiver.url("/bi"), "secret": secret, "enrich": True},
        ],
    }
    sync.handle_event(event=make_event("BILL_PAYED"), settings=sync.read_settings(config=config))
    assert dolibarr.paths() == ["invoices/311"]  # one read for both enriched endpoints
    enriched = {r.path: r.payload["data"]["enriched"] for r in receiver.requests}
    assert enriched == {"/erp2": True, "/archive": False, "/bi": True}

    # A rolled-back object: the plain endpoint still gets what Dolibarr sent, the delivery is dead.
    receiver.requests.clear()
    dolibarr.missing.add("invoices/311")
    settings = sync.read_settings(config=dict(config, enrich_attempts=1))
    with pytest.raises(PermanentFailure, match="not found"):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert [r.path for r in receiver.requests] == ["/archive"]


def test_enriched_endpoint_busy_after_read(receiver, dolibarr, enrich_config, make_event):
    settings = sync.read_settings(config=enrich_config(url=receiver.url("/status/429?retry_after=5"), enrich_delay=0))
    with pytest.raises(RetryLater):
        sync.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert dolibarr.paths() == ["invoices/311"]
    assert receiver.requests[0].payload["data"]["enriched"] is True
