"""The catalogue of trigger codes: what Dolibarr really fires, what its form only offers, and
the script that rebuilds it from Dolibarr's source trees."""

from __future__ import annotations

import json
from pathlib import Path

from dolibarr_webhooks_testplugin import command

import dolibarr_webhooks
from dolibarr_webhooks import triggers_from_source
from dolibarr_webhooks.events import dolibarr_codes

DATA = Path(__file__).parent / "data"
TREES = DATA / "dolibarr-source"


def captured_codes() -> set[str]:
    bodies = [*DATA.glob("captured-*/*.json"), *(DATA / "payloads").glob("*.json")]
    assert len(bodies) >= 25
    return {json.loads(p.read_bytes())["triggercode"] for p in bodies}


def test_events_lists_every_captured_code_with_a_label_and_flags_what_is_never_fired(make_app):
    rows = {r["code"]: r for r in command(make_app(), "events", "--json")}
    for code in captured_codes():
        assert code in rows, code
        assert rows[code]["label"] != code or code == "TEST_TRIGGER_CODE", code
        assert not rows[code]["never_fired"], code
    assert rows["BILL_SUPPLIER_CANCELED"]["never_fired"] and rows["BILL_SUPPLIER_CANCELED"]["offered_by_dolibarr_form"]
    assert rows["BILL_SUPPLIER_CANCEL"]["module"] == "Vendors"
    assert rows["PAYMENT_ADD_TO_BANK"]["label"] == "Payment recorded in the bank account"
    text = command(make_app(), "events")
    assert "BILL_SUPPLIER_CANCELED (never fired)" in text and "never fired: BILL_SUPPLIER_CANCELED" in text


def test_every_code_names_the_module_it_needs():
    codes = dolibarr_codes()
    assert len(codes) > 150
    assert all(c.module for c in codes), [c.code for c in codes if not c.module]


def test_check_warns_of_a_plugin_waiting_for_a_code_never_fired(make_app, tmp_path):
    from dolibarr_webhooks.cli.check import Report, _check_plugins

    app = make_app({"recorder": {"file": str(tmp_path / "r.jsonl"), "events": ["BILL_SUPPLIER_CANCELED", "BILL_*"]}})
    report = Report()
    _check_plugins(app.extensions["dolibarr_webhooks"].settings, report)
    warnings = [f.message for f in report.findings if f.level == "warning"]
    assert any("recorder waits for BILL_SUPPLIER_CANCELED" in w for w in warnings), report.findings


def test_the_script_rebuilds_the_catalogue_from_source_trees(tmp_path):
    output = tmp_path / "triggers.json"
    assert triggers_from_source.main(["--output", str(output), f"20={TREES / '20'}", f"22={TREES / '22'}"]) == 0
    codes = json.loads(output.read_text())["codes"]
    assert codes["BILL_SUPPLIER_CANCEL"]["fired"] == ["22"] and codes["BILL_SUPPLIER_CANCEL"]["offered"] == []
    assert codes["BILL_SUPPLIER_CANCELED"]["fired"] == [] and codes["BILL_SUPPLIER_CANCELED"]["offered"] == ["22"]
    assert codes["BILL_SUPPLIER_VALIDATE"]["fired"] == ["20", "22"] == codes["BILL_SUPPLIER_VALIDATE"]["offered"]
    assert codes["BANKACCOUNT_CREATE"] == {"family": "BANKACCOUNT", "element": "bank_account", "module": "bank",
                                           "fired": ["22"], "offered": [], "provenance": "source"}
    assert codes["COMPANY_CREATE"]["module"] == "societe" and codes["BILL_SUPPLIER_VALIDATE"]["module"] == "fourn"
    assert "ORDER_SUPPLIER_CREATE" not in codes, "a commented-out dictionary line offers nothing"
    assert not [c for c in codes if c.endswith("_MODIFY")], "a code built at run time is not guessed"


def test_the_shipped_catalogue_is_in_the_scripts_format():
    shipped = Path(dolibarr_webhooks.__file__).with_name("triggers.json")
    text = shipped.read_text(encoding="utf-8")
    assert triggers_from_source.dumps(json.loads(text)) == text
