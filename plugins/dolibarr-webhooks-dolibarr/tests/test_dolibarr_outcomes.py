"""delivery_outcome against the fake Dolibarr: one agenda event per outcome, on the object's
card, worded for a person, written once, never for the plugin's own echoes."""

from __future__ import annotations

import logging

import pytest

import dolibarr_webhooks_dolibarr as plugin
from dolibarr_webhooks.pluginkit import Outcome
from dolibarr_webhooks_dolibarr.api import DolibarrUnavailable
from dolibarr_webhooks_dolibarr.agenda import OWN_CODE


def cards(dolibarr) -> list[tuple]:
    return [(e["elementtype"], e["elementid"], e["socid"], e["label"]) for e in dolibarr.agenda.values()]


def test_a_delivered_email_is_an_agenda_event_on_the_third_party(dolibarr, plugin_settings, event_for):
    event = event_for("COMPANY_CREATE")
    plugin.delivery_outcome(outcome=Outcome("delivered", "email", event, 1), settings=plugin_settings())
    (written,) = dolibarr.agenda.values()
    assert (written["elementtype"], written["elementid"], written["socid"]) == ("societe", "42", "42")
    assert written["label"] == "Email sent: Third party Acme Industries created (billing@acme.example)"
    assert written["type_code"] == "AC_OTH_AUTO" and written["code"] == OWN_CODE
    assert written["userownerid"] == str(dolibarr.user_id)
    assert f"event {event.id}, plugin email, delivered" in written["note_private"]
    (post,) = dolibarr.made("POST", "agendaevents")
    assert post.body["elementtype"] == "societe" and post.body["percentage"] == -1
    assert post.key == dolibarr.key


def test_each_plugin_is_worded_and_invoices_are_linked_as_dolibarr_stores_them(dolibarr, plugin_settings, event_for):
    settings = plugin_settings()
    paid, signed = event_for("BILL_PAYED"), event_for("PROPAL_CLOSE_SIGNED")
    plugin.delivery_outcome(outcome=Outcome("delivered", "sync", paid, 2), settings=settings)
    plugin.delivery_outcome(outcome=Outcome("recovered", "slack", signed, 3), settings=settings)
    plugin.delivery_outcome(outcome=Outcome("delivered", "erpx", signed, 1), settings=settings)
    assert cards(dolibarr) == [
        ("invoice", "311", "42", "Forwarded to other software: Invoice FA2611-0042 paid: 2,243.76 EUR incl. tax "
                                 "(third party 42)"),
        ("propal", "88", "42", "Slack notified: Proposal PR2611-0088 signed: 2,243.76 EUR incl. tax (third party 42)"),
        ("propal", "88", "42", "erpx done: Proposal PR2611-0088 signed: 2,243.76 EUR incl. tax (third party 42)"),
    ]
    # The invoice's event is found where Dolibarr's own list finds it: elementtype 'invoice', not 'facture'.
    query = dolibarr.made("GET", "agendaevents")[0].query["sqlfilters"]
    assert query == f"(t.code:=:'{OWN_CODE}') and (t.elementtype:=:'invoice') and (t.fk_element:=:311)"


def test_a_dead_delivery_says_what_failed_and_how_to_replay(dolibarr, plugin_settings, event_for):
    event = event_for("BILL_PAYED")
    outcome = Outcome("dead", "slack", event, 7, error="Slack answered 404 no_service",
                      dashboard_url="https://hooks.example/admin/events/x")
    plugin.delivery_outcome(outcome=outcome, settings=plugin_settings())
    (written,) = dolibarr.agenda.values()
    assert written["label"].startswith("Slack NOT notified: Invoice FA2611-0042 paid")
    note = written["note_private"].splitlines()
    assert note[0] == "BILL_PAYED handled by the slack plugin of dolibarr-webhooks: dead after 7 attempts."
    assert "Last error: Slack answered 404 no_service" in note
    assert f"Replay: dolibarr-webhooks replay {event.id} --plugin slack" in note
    assert "Dashboard: https://hooks.example/admin/events/x" in note


def test_written_once_even_when_the_answer_was_lost(dolibarr, plugin_settings, event_for):
    """The core calls again after an exception: the event Dolibarr saved is found, not doubled."""
    settings = plugin_settings()
    outcome = Outcome("delivered", "email", event_for("BILL_PAYED"), 1)
    dolibarr.fault("GET agendaevents", 500)
    with pytest.raises(DolibarrUnavailable, match="500"):
        plugin.delivery_outcome(outcome=outcome, settings=settings)
    plugin.delivery_outcome(outcome=outcome, settings=settings)
    plugin.delivery_outcome(outcome=outcome, settings=settings)  # as if the answer to the POST was lost
    assert len(dolibarr.agenda) == 1
    assert len(dolibarr.made("POST", "agendaevents")) == 1
    # Another plugin's outcome for the same event is its own line on the card.
    plugin.delivery_outcome(outcome=Outcome("delivered", "slack", outcome.event, 1), settings=settings)
    assert len(dolibarr.agenda) == 2


def test_the_api_user_is_read_once(dolibarr, plugin_settings, event_for):
    settings = plugin_settings()
    for code in ("BILL_PAYED", "COMPANY_CREATE", "PROPAL_CLOSE_SIGNED"):
        plugin.delivery_outcome(outcome=Outcome("delivered", "email", event_for(code), 1), settings=settings)
    assert len(dolibarr.made("GET", "users/info")) == 1
    assert len(dolibarr.agenda) == 3


def test_which_plugins_and_outcomes_are_written_back(dolibarr, plugin_settings, event_for):
    settings = plugin_settings(plugins="email,sync", outcomes=["dead"])
    event = event_for("BILL_PAYED")
    plugin.delivery_outcome(outcome=Outcome("delivered", "email", event, 1), settings=settings)
    plugin.delivery_outcome(outcome=Outcome("dead", "slack", event, 7, error="x"), settings=settings)
    plugin.delivery_outcome(outcome=Outcome("dead", "email", event, 7, error="x"), settings=settings)
    assert [label for *_, label in cards(dolibarr)] == [
        "Email NOT sent: Invoice FA2611-0042 paid: 2,243.76 EUR incl. tax (third party 42)"]


def test_the_core_s_log_line_is_not_news_for_the_card(dolibarr, plugin_settings, event_for):
    plugin.delivery_outcome(outcome=Outcome("delivered", "log", event_for("BILL_PAYED"), 1), settings=plugin_settings())
    assert dolibarr.calls == []
    plugin.delivery_outcome(outcome=Outcome("delivered", "log", event_for("BILL_PAYED"), 1),
                            settings=plugin_settings(plugins=["log"]))  # unless asked for
    assert len(dolibarr.agenda) == 1


def test_objects_without_a_card_are_left_alone(dolibarr, plugin_settings, event_for, dolibarr_event):
    settings = plugin_settings()
    for event in (event_for("COMPANY_DELETE"), dolibarr_event("TEST_TRIGGER_CODE", test=True),
                  event_for("BILL_PAYED", id="not-a-number"), event_for("BILL_PAYED", id="²"),
                  event_for("BILL_PAYED", id=0)):
        plugin.delivery_outcome(outcome=Outcome("delivered", "email", event, 1), settings=settings)
    assert dolibarr.calls == []


def test_its_own_agenda_events_are_not_written_back(dolibarr, plugin_settings, event_for, captured_event, caplog):
    """The loop: a written agenda event fires ACTION_CREATE, which another plugin delivers; its
    outcome must not become another agenda event."""
    caplog.set_level(logging.INFO)
    settings = plugin_settings()
    plugin.delivery_outcome(outcome=Outcome("delivered", "email", event_for("BILL_PAYED"), 1), settings=settings)
    (written,) = dolibarr.agenda.values()
    user = str(dolibarr.user_id)
    echo = captured_event("ACTION_CREATE-automatic", id=int(written["id"]), code=OWN_CODE, authorid=user,
                          userownerid=user, userassigned={user: {"id": user, "transparency": 0}},
                          elementtype="invoice", fk_element=311)
    calls = len(dolibarr.calls)
    plugin.delivery_outcome(outcome=Outcome("delivered", "sync", echo, 1), settings=settings)
    assert len(dolibarr.calls) == calls  # an agenda event has no card of its own to write on
    # An order the plugin created (ORDER_CREATE by its user) is not written back either.
    created = captured_event("ORDER_VALIDATE", trigger="ORDER_CREATE", user_author_id=user, user_creation_id=user)
    plugin.delivery_outcome(outcome=Outcome("delivered", "sync", created, 1), settings=settings)
    assert len(dolibarr.agenda) == 1
    assert not dolibarr.made("GET", "agendaevents/.*") and len(dolibarr.made("POST", "agendaevents")) == 1
    assert "done by the plugin's own API user (id 7)" in caplog.text


def test_a_person_s_events_are_written_back(dolibarr, plugin_settings, captured_event):
    settings = plugin_settings()
    modified = captured_event("COMPANY_MODIFY", user_creation_id=str(dolibarr.user_id))  # modified by user 1
    plugin.delivery_outcome(outcome=Outcome("delivered", "sync", modified, 1), settings=settings)
    created = captured_event("ORDER_VALIDATE", trigger="ORDER_CREATE")  # created by user 1
    plugin.delivery_outcome(outcome=Outcome("delivered", "sync", created, 1), settings=settings)
    assert [(e["elementtype"], e["elementid"]) for e in dolibarr.agenda.values()] == [("societe", "1"), ("order", "1")]


@pytest.mark.parametrize("setup, logged", [
    (lambda d: setattr(d, "key", "another key"),
     "answered GET /users/info with 401: Unauthorized: Error user not valid"),
    (lambda d: d.forbidden.add("GET users/info"), "(user self creer)"),
    (lambda d: setattr(d, "agenda_module", False),
     "answered GET /agendaevents with 403: Forbidden: Insufficient rights"),
    (lambda d: d.fault("POST agendaevents", 400), "answered POST /agendaevents with 400"),
    # Dolibarr answers the new row's id; a TypeError ended the notice instead.
    (lambda d: d.odd.update({"POST agendaevents": (200, {"id": "1"})}),
     "POST /agendaevents answered no agenda event id"),
])
def test_refusals_are_logged_not_retried(dolibarr, plugin_settings, event_for, caplog, setup, logged):
    settings = plugin_settings()
    setup(dolibarr)
    plugin.delivery_outcome(outcome=Outcome("delivered", "email", event_for("BILL_PAYED"), 1), settings=settings)
    assert logged in caplog.text
    assert dolibarr.key not in caplog.text and settings.sources["*"].api_key not in caplog.text
    assert dolibarr.agenda == {}


def test_unreachable_dolibarr_is_retried_by_the_core(plugin_settings, event_for, dolibarr):
    settings = plugin.read_settings(config={"api_key": "k", "api_url": "http://127.0.0.1:9/api/index.php"})
    with pytest.raises(DolibarrUnavailable, match="ConnectionError"):
        plugin.delivery_outcome(outcome=Outcome("delivered", "email", event_for("BILL_PAYED"), 1), settings=settings)


def test_sources_without_write_back_are_skipped(dolibarr, event_for):
    settings = plugin.read_settings(config={"sources": {"shop": {"api_key": dolibarr.key}}, "settle_delay": 0})
    plugin.delivery_outcome(outcome=Outcome("delivered", "email", event_for("BILL_PAYED"), 1), settings=settings)
    assert dolibarr.calls == []  # the event came from source "default"
