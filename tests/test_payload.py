"""From raw bytes to an Event: PHP escaping, loose types, aliases, scrubbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dolibarr_webhooks.events import canonical_code, label, matches, split_code
from dolibarr_webhooks.describe import currency, format_amount, person_name, summary, thirdparty_label
from dolibarr_webhooks.events import Event
from dolibarr_webhooks.pipeline.parse import MissingTriggerCode, ParseError, event_from_body, parse_body, scrub
from dolibarr_webhooks.samples import sample_body, sample_codes

PAYLOADS = Path(__file__).parent / "data" / "payloads"


def test_project_samples_are_the_shared_ones():
    # The package ships the bodies the tests use, so users without ../shared have them too.
    for path in PAYLOADS.glob("*.json"):
        assert sample_body(path.stem) == path.read_bytes()


@pytest.mark.parametrize("code", sample_codes())
def test_every_sample_parses_and_is_scrubbed(code):
    raw = sample_body(code)
    event = event_from_body(raw, dolibarr_url="https://erp.example/")
    assert event.trigger_code == code
    text = event.to_json()
    assert '"db"' not in text and "database_user" not in text and "lastquery" not in text
    assert Event.from_json(text) == event
    assert raw.isascii() and b"\\/" in raw or b"/" not in raw  # PHP escaping survives as is


def test_db_handler_is_in_the_raw_line_and_gone_after():
    raw = sample_body("BILL_VALIDATE")
    assert b'"database_user"' in raw
    event = event_from_body(raw)
    assert all("db" not in line for line in event.object["lines"])


def test_configured_keys_masked_at_every_depth_and_db_removed():
    obj = {"a": 1, "secret_note": "x", "lines": [{"secret_note": "y", "db": {}, "b": [{"secret_note": 1}]}]}
    masked = "[scrubbed]"
    assert scrub(obj, ["secret_note"]) == {"a": 1, "secret_note": masked,
                                           "lines": [{"secret_note": masked, "b": [{"secret_note": masked}]}]}
    assert obj["secret_note"] == "x", "scrub copies"


def test_validate_uses_the_definitive_ref():
    event = event_from_body(sample_body("BILL_VALIDATE"))
    assert event.object["ref"] == "(PROV311)"
    assert event.ref == "FA2611-0042"
    assert event.object_id == "311" and event.element == "facture" and event.entity == "1"


def test_loose_types_and_php_empty_map():
    event = event_from_body(b'{"triggercode":"COMPANY_CREATE","object":[]}')
    assert event.object == {} and event.object_id is None
    event = event_from_body(b'{"object":{"id":"42","entity":1.0,"total_ttc":120},"triggercode":"BILL_PAYED"}')
    assert event.object_id == "42" and event.entity == "1"


def test_node_guide_form_and_aliases():
    event = event_from_body(json.dumps({"event": "INVOICE_PAID", "data": {"id": 7}}).encode())
    assert event.trigger_code == "BILL_PAYED" and event.sent_code == "INVOICE_PAID"
    assert canonical_code("thirdparty_create") == "COMPANY_CREATE"
    assert canonical_code("PROPOSAL_CLOSE_SIGNED") == "PROPAL_CLOSE_SIGNED"
    assert canonical_code("PROPOSAL_SUPPLIER_CREATE") == "PROPOSAL_SUPPLIER_CREATE"  # a real code
    assert matches("BILL_VALIDATE", ["INVOICE_*"]) and not matches("ORDER_VALIDATE", ["BILL_*"])
    assert matches("ANYTHING", None) and not matches("ANYTHING", [])


@pytest.mark.parametrize("raw", [b"", b"   ", b"{not json", b"[1,2]", b'"text"', b"\xff\xfe{}"])
def test_unparseable(raw):
    with pytest.raises(ParseError):
        parse_body(raw)


@pytest.mark.parametrize("raw", [b"{}", b'{"triggercode":""}', b'{"object":{"id":1}}', b'{"triggercode":null}'])
def test_no_trigger_code(raw):
    with pytest.raises(MissingTriggerCode):
        parse_body(raw)


def test_unknown_codes_are_events_like_any_other():
    event = event_from_body(b'{"triggercode":"MYMODULE_THING_DONE","object":{"id":3,"ref":"X1"}}')
    assert event.trigger_code == "MYMODULE_THING_DONE"
    assert summary(event) == "MYMODULE_THING_DONE on object X1"


def test_a_code_splits_into_its_family_and_action():
    assert split_code("BILL_VALIDATE") == ("BILL", "VALIDATE")
    assert split_code("COMPANY_RIB_CREATE") == ("COMPANY_RIB", "CREATE")  # the longer family
    assert split_code("PROPAL_CLOSE_SIGNED") == ("PROPAL", "CLOSE_SIGNED")  # an action with an underscore
    for code in ("MYMODULE_THING_DONE", "BILL", "BILL_", "_CREATE", "BILL__VALIDATE", "BILL_VALIDATE_", ""):
        assert split_code(code) is None, code


def test_labels_and_human_lines():
    assert label("BILL_PAYED") == "Invoice paid" and label("BILL_PAYED", "fr") == "Facture payée"
    assert label("PROPAL_CLOSE_SIGNED", "fr") == "Proposition commerciale signée"
    assert format_amount("2243.76000000", "EUR") == "2,243.76 EUR"
    assert format_amount(120, None) == "120.00"
    assert format_amount("", "EUR") is None
    lines = {code: summary(event_from_body(sample_body(code))) for code in sample_codes()}
    assert lines["BILL_VALIDATE"] == "Invoice FA2611-0042 validated: 2,243.76 EUR incl. tax (third party 42)"
    assert lines["COMPANY_CREATE"] == "Third party Acme Industries created (billing@acme.example)"
    assert lines["CONTACT_CREATE"].startswith("Contact Claire Martin created")
    assert lines["PAYMENT_CUSTOMER_CREATE"].startswith("Customer payment PAY2611-0007 created: 2,243.76 EUR")
    assert lines["PROPAL_CLOSE_SIGNED"].startswith("Proposal PR2611-0088 signed")
    assert lines["ORDER_VALIDATE"].startswith("Order CO2611-0021 validated")
    assert lines["PRODUCT_CREATE"] == "Product HW-SW24 created: Switch 24 ports"
    assert lines["PROJECT_CREATE"].startswith("Project PJ2611-0014 created: ERP roll-out Acme")
    assert lines["TEST_TRIGGER_CODE"] == "TEST_TRIGGER_CODE (test)"


def test_human_lines_quote_a_forged_lone_surrogate_as_its_escape():
    """The words plugins send (summary, the third party, a name, the currency) come from the
    object as it came: a forged body's lone surrogate made every message of it unsendable."""
    event = event_from_body(b'{"triggercode":"BILL_VALIDATE","object":{"id":3,"element":"facture","ref":"FA1",'
                            b'"multicurrency_code":"E\\udfff","multicurrency_total_ttc":"5","socid":"x\\ud800",'
                            b'"name":"n\\udc00"}}')
    line = summary(event)
    assert line == "Invoice FA1 validated: 5.00 E\\udfff incl. tax (third party x\\ud800)"
    assert thirdparty_label(event.object) == "third party x\\ud800" and currency(event.object) == "E\\udfff"
    assert person_name(event.object) == "n\\udc00"
    assert thirdparty_label({"thirdparty": {"name": "T\udfff"}}) == "T\\udfff"


def test_card_links():
    event = event_from_body(sample_body("BILL_PAYED"), dolibarr_url="https://erp.example/dolibarr/")
    assert event.card_url == "https://erp.example/dolibarr/compta/facture/card.php?facid=311"
    assert event_from_body(sample_body("BILL_PAYED")).card_url is None
