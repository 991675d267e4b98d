"""handle_event's actions against the fake Dolibarr: re-read first, act once, map the API's errors."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

import dolibarr_webhooks_dolibarr as plugin
from dolibarr_webhooks import PermanentFailure, RetryLater
from dolibarr_webhooks_dolibarr.api import DolibarrUnavailable

API_KEY_IN_SETTINGS = "0123456789abcdef0123456789abcdef01234567"  # conftest's API_KEY
ACTIONS = {"PROPAL_CLOSE_SIGNED": ["create_order"], "ORDER_VALIDATE": ["build_pdf"]}


def in_two_minutes() -> str:
    """A Retry-After header as an HTTP date, 120 s from now."""
    return format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)


@pytest.fixture
def settings(plugin_settings):
    return plugin_settings(actions=ACTIONS)


def test_handles_only_the_codes_with_actions(plugin_settings):
    assert plugin.handled_events(settings=plugin_settings(actions=ACTIONS)) == ["ORDER_VALIDATE", "PROPAL_CLOSE_SIGNED"]
    assert plugin.handled_events(settings=plugin_settings()) == []


def test_a_signed_proposal_becomes_one_order(dolibarr, settings, event_for):
    plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)
    assert dolibarr.order_ids_of(88) == ["22"]
    assert [(c.method, c.path) for c in dolibarr.calls] == [
        ("GET", "users/info"), ("GET", "proposals/88"), ("POST", "orders/createfromproposal/88")]
    # A retry, or a second delivery of the same signature: the linked order is found, none made.
    plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)
    assert dolibarr.order_ids_of(88) == ["22"]
    assert len(dolibarr.made("POST")) == 1


def test_the_fake_is_as_careless_as_dolibarr(dolibarr, settings, event_for):
    """What makes the check above necessary: createfromproposal called twice makes two orders (recorded 12, 13)."""
    import requests

    for _ in range(2):
        response = requests.post(f"{dolibarr.url}/orders/createfromproposal/88", headers={"DOLAPIKEY": dolibarr.key},
                                 timeout=5)
        assert response.status_code == 200 and response.json()["ref"].startswith("(PROV")
    assert dolibarr.order_ids_of(88) == ["22", "23"]


def test_an_order_made_by_an_attempt_whose_answer_was_lost_is_not_made_again(dolibarr, settings, event_for):
    dolibarr.fail_after_create = 1  # the order is saved, then Dolibarr answers 500
    event = event_for("PROPAL_CLOSE_SIGNED")
    with pytest.raises(DolibarrUnavailable, match="500: Internal Server Error"):
        plugin.handle_event(event=event, settings=settings)
    plugin.handle_event(event=event, settings=settings)  # the worker's retry
    assert dolibarr.order_ids_of(88) == ["22"]
    assert len(dolibarr.orders) == 2  # order 21 of the fixture, and the one created


def test_an_order_already_linked_is_enough(dolibarr, settings, event_for, caplog):
    """Dolibarr's Workflow module may have made the order in the same transaction."""
    caplog.set_level(logging.INFO)
    dolibarr.proposals[88]["linkedObjectsIds"] = {"commande": {"5": "21"}}
    plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)
    assert not dolibarr.made("POST")
    assert "proposal PR2611-0088 already has order 21; none created" in caplog.text


@pytest.mark.parametrize("status", [1, 3, 0])
def test_a_signature_rolled_back_creates_nothing(dolibarr, settings, event_for, caplog, status):
    dolibarr.proposals[88].update(status=status, statut=status)
    plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)
    assert not dolibarr.made("POST")
    assert f"has status {status} in Dolibarr, not signed (2): the signature was rolled back" in caplog.text


def test_a_proposal_gone_creates_nothing(dolibarr, settings, event_for, caplog):
    del dolibarr.proposals[88]
    plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)
    assert not dolibarr.made("POST")
    assert "proposal 88 not found in Dolibarr (rolled back or deleted): nothing done" in caplog.text


@pytest.mark.parametrize("object_id", ["not-a-number", "²", 0, -3, True])
def test_an_event_without_a_row_id_is_skipped(dolibarr, settings, event_for, object_id, caplog):
    """"²" is a digit to str.isdigit, and int("²") raised: a delivery retried until dead."""
    plugin.handle_event(event=event_for("ORDER_VALIDATE", id=object_id), settings=settings)
    assert [call for call in dolibarr.calls if call.path != "users/info"] == []
    assert "no commande id in the event; actions build_pdf skipped" in caplog.text


def test_a_validated_order_gets_its_pdf(dolibarr, settings, event_for):
    plugin.handle_event(event=event_for("ORDER_VALIDATE"), settings=settings)
    (build,) = dolibarr.made("PUT", "documents/builddoc")
    assert build.body == {"modulepart": "commande", "original_file": "CO2611-0021/CO2611-0021.pdf"}


def test_a_validation_rolled_back_builds_nothing(dolibarr, settings, event_for, caplog):
    dolibarr.add_order(21, status="0")
    plugin.handle_event(event=event_for("ORDER_VALIDATE"), settings=settings)
    assert not dolibarr.made("PUT")
    assert "order (PROV21) is a draft or cancelled in Dolibarr (status 0)" in caplog.text


def test_a_pdf_dolibarr_cannot_find_is_a_permanent_failure(dolibarr, settings, event_for):
    dolibarr.fault("PUT documents/builddoc", 404)
    with pytest.raises(PermanentFailure, match="404: Not Found: Invoice not found"):
        plugin.handle_event(event=event_for("ORDER_VALIDATE"), settings=settings)


def test_its_own_api_user_s_events_are_not_acted_on(dolibarr, settings, captured_event, caplog):
    caplog.set_level(logging.INFO)
    signed = captured_event("PROPAL_CLOSE_SIGNED", id="88")  # user 1 signed: acted on
    plugin.handle_event(event=signed, settings=settings)
    assert len(dolibarr.made("POST")) == 1
    mine = captured_event("ORDER_VALIDATE", trigger="ORDER_MODIFY", id="21", user_modification_id="7")
    plugin.handle_event(event=mine, settings=plugin.read_settings(
        config={"api_key": dolibarr.key, "settle_delay": 0, "actions": {"ORDER_MODIFY": ["build_pdf"]}}))
    assert not dolibarr.made("PUT")
    assert "ORDER_MODIFY was done by the plugin's own API user (id 7)" in caplog.text


def test_an_order_the_plugin_created_and_a_person_validated_is_acted_on(dolibarr, settings, captured_event):
    """The acting user is the one of the step the code names: the order's author is the plugin
    (it created the order from the proposal), its validation is a person's."""
    mine = str(dolibarr.user_id)
    validated = captured_event("ORDER_VALIDATE", id="21", user_author_id=mine, user_creation_id=mine)
    plugin.handle_event(event=validated, settings=settings)
    assert len(dolibarr.made("PUT", "documents/builddoc")) == 1


def test_waits_for_dolibarr_s_commit(dolibarr, plugin_settings, event_for):
    settings = plugin_settings(actions=ACTIONS, settle_delay=0.5)
    event = event_for("PROPAL_CLOSE_SIGNED")
    plugin.handle_event(event=event, settings=settings)
    (read,) = [i for i, c in enumerate(dolibarr.calls) if c.path == "proposals/88"]
    assert datetime.now(timezone.utc) - event.received_at >= timedelta(seconds=0.5)
    assert read == 1


@pytest.mark.parametrize("setup, raised, text", [
    (lambda d: setattr(d, "key", "another key"), PermanentFailure,
     "answered GET /users/info with 401: Unauthorized: Error user not valid"),
    (lambda d: d.forbidden.add("POST orders/createfromproposal/.*"), PermanentFailure,
     "answered POST /orders/createfromproposal/88 with 403: Forbidden. The API user lacks a right"),
    (lambda d: d.fault("GET proposals/88", 500), DolibarrUnavailable, "with 500: Internal Server Error"),
    (lambda d: d.fault("GET proposals/88", 503, headers={"Retry-After": "120"}), RetryLater, "with 503"),
    (lambda d: d.fault("GET proposals/88", 503), DolibarrUnavailable, "with 503: Service Unavailable"),
    (lambda d: d.fault("GET proposals/88", 429, headers={"Retry-After": in_two_minutes()}), RetryLater, "with 429"),
])
def test_api_errors_tell_the_worker_what_to_do(dolibarr, settings, event_for, setup, raised, text):
    setup(dolibarr)
    with pytest.raises(raised, match=text) as caught:
        plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)
    assert dolibarr.key not in str(caught.value) and API_KEY_IN_SETTINGS not in str(caught.value)
    if raised is RetryLater:
        assert 110 < caught.value.after <= 120
    assert dolibarr.order_ids_of(88) == []


def test_a_wrong_api_url_is_a_permanent_failure(dolibarr, event_for):
    """Under the wrong path Dolibarr answers 501 with plain text (recorded 58)."""
    settings = plugin.read_settings(config={"api_key": dolibarr.key, "api_url": f"{dolibarr.root}/api/index.php/v2",
                                            "actions": ACTIONS, "settle_delay": 0})
    with pytest.raises(PermanentFailure, match="501: API not found .*is its module enabled"):
        plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)


def test_unreachable_dolibarr_is_retried(event_for):
    settings = plugin.read_settings(config={"api_key": "k", "api_url": "http://127.0.0.1:9/api/index.php",
                                            "actions": ACTIONS, "settle_delay": 0})
    with pytest.raises(DolibarrUnavailable, match="GET /users/info: ConnectionError"):
        plugin.handle_event(event=event_for("PROPAL_CLOSE_SIGNED"), settings=settings)


def test_no_dolibarr_url_is_a_permanent_failure(dolibarr, dolibarr_event):
    settings = plugin.read_settings(config={"api_key": "k", "actions": ACTIONS})
    with pytest.raises(PermanentFailure, match="no Dolibarr URL for source default"):
        plugin.handle_event(event=dolibarr_event("PROPAL_CLOSE_SIGNED", dolibarr_url=None), settings=settings)
