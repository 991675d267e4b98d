"""One object followed through its events: the same label from creation to deletion, listed
together by ``history``; stores from before labels and credential masking cleaned by ``scrub``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dolibarr_webhooks_testplugin import command
from sqlalchemy import text

from dolibarr_webhooks.credentials import MARKER
from dolibarr_webhooks.pipeline.parse import event_from_body
from dolibarr_webhooks.store import SCHEMA_VERSION, payloads
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET

DATA = Path(__file__).parent / "data"
MORE = DATA / "captured-22.0.4-more"

# Every captured body's label, as the rule gives it (labels.py).
LABELS = {
    "01_ACTION_CREATE-automatic": "Third party Société Générale d'Électricité — Ünïcødé created",
    "02_COMPANY_CREATE": "Société Générale d'Électricité — Ünïcødé",
    "04_COMPANY_DELETE": "Société à supprimer — Ÿ 20261203023006",
    "05_CONTACT_CREATE": "Zoë Müller-Lüdenscheidt",
    "06_CONTACT_MODIFY": "Zoë Müller-Lüdenscheidt",
    "07_CONTACT_DELETE": "Ørjan Łukasiewicz",
    "12_CATEGORY_CREATE": "Câbles & fils — 20261203023006",
    "13_BANKACCOUNT_CREATE": "BQ03023006",
    "21_SHIPPING_CREATE": "#6",  # no ref before validation, no name: the id, as a last resort
    "30_PAYMENT_ADD_TO_BANK": "PAY2612-0006",
    "50_USER_CREATE": "harn.1203023006",
    "51_USER_NEW_PASSWORD": "harn.1203023006",
    "52_USER_MODIFY": "harn.1203023006",
    "54_MEMBER_CREATE": "Anaïs Lefèvre",
    "61_BILL_SUPPLIER_CANCEL": "SI2612-0006",
}


def test_every_captured_body_is_labelled():
    assert sorted(LABELS) == sorted(p.stem for p in MORE.glob("*.json"))
    for name, label in LABELS.items():
        assert event_from_body((MORE / f"{name}.json").read_bytes()).label == label, name


def test_draft_and_bare_id_refs():
    draft = event_from_body(b'{"triggercode":"BILL_CREATE","object":{"id":3,"element":"facture","ref":"(PROV3)"}}')
    assert draft.label == "draft (PROV3)" and draft.ref == "(PROV3)"
    validated = event_from_body(b'{"triggercode":"BILL_VALIDATE","object":{"id":3,"element":"facture",'
                                b'"ref":"(PROV3)","newref":"FA2612-0003","status":0}}')
    assert validated.label == "FA2612-0003" and validated.state == "validated" and validated.dolibarr_status == 1
    assert validated.object["status"] == 0, "Dolibarr's body keeps the draft status: Event.state says what happened"
    contact = event_from_body(b'{"triggercode":"CONTACT_MODIFY","object":{"id":"13","ref":"13","element":"contact",'
                              b'"firstname":"Ana","lastname":"Lima"}}')
    assert contact.label == "Ana Lima"
    nothing = event_from_body(b'{"triggercode":"SHIPPING_CREATE","object":{"id":7,"element":"shipping"}}')
    assert nothing.label == "#7"


def _company(code: str, name: str) -> bytes:
    data = json.loads((MORE / f"{name}.json").read_bytes())
    data["triggercode"] = code
    data["object"]["id"] = 16  # one third party: created, modified, deleted
    return json.dumps(data).encode()


def test_history_lists_one_third_party_from_creation_to_deletion(make_app):
    app = make_app()
    client = app.test_client()
    other = client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=(MORE / "05_CONTACT_CREATE.json").read_bytes())
    assert other.status_code == 200
    ids = []
    for code, name in (("COMPANY_CREATE", "02_COMPANY_CREATE"), ("COMPANY_MODIFY", "02_COMPANY_CREATE"),
                       ("COMPANY_DELETE", "04_COMPANY_DELETE")):
        response = client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=_company(code, name))
        assert response.status_code == 200, response.json
        ids.append(response.json["id"])
    for kind in ("societe", "COMPANY", "thirdparty"):
        rows = command(app, "history", kind, "16", "--json")
        assert [r["id"] for r in rows] == ids, kind
    assert [r["trigger_code"] for r in rows] == ["COMPANY_CREATE", "COMPANY_MODIFY", "COMPANY_DELETE"]
    assert [r["label"] for r in rows] == [LABELS["02_COMPANY_CREATE"]] * 2 + [LABELS["04_COMPANY_DELETE"]]
    assert "COMPANY_MODIFY" in command(app, "history", "societe", "16")
    assert "no event of societe 99" in command(app, "history", "societe", "99")


def test_an_old_store_is_reported_then_cleaned_by_scrub(make_app, database_url):
    app = make_app()
    client = app.test_client()
    raw = (MORE / "52_USER_MODIFY.json").read_bytes()
    assert client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=raw).status_code == 200
    store = app.extensions["dolibarr_webhooks"].store
    # What a store written before this release holds: the clear body, no label, no rule.
    old = json.loads(raw)["object"]
    with store.engine.begin() as conn:
        row = conn.execute(text("SELECT id, payload FROM events")).one()
        payload = payloads.parsed(row.payload)
        payload["object"] = old
        payload.pop("label")
        conn.execute(text("UPDATE events SET payload = :p, label = NULL, scrub_rule = NULL WHERE id = :id"),
                     {"p": json.dumps(payload), "id": row.id})
    shown = command(app, "show", row.id, "--json")
    assert shown["payload"]["object"]["pass"] == MARKER, "show never prints a credential, even an old one"

    from dolibarr_webhooks.cli.check import Report, _check_stored_credentials

    report = Report()
    _check_stored_credentials(app.extensions["dolibarr_webhooks"].settings, store, report)
    assert [f.level for f in report.findings] == ["warning"]
    assert "1 stored events" in report.findings[0].message

    assert command(app, "scrub", "--json") == {"read": 1, "changed": 1}
    with store.engine.connect() as conn:
        cleaned = conn.execute(text("SELECT payload, label, scrub_rule FROM events")).one()
    rewritten = payloads.unpacked(cleaned.payload)
    assert isinstance(cleaned.payload, bytes if "sqlite" in store.url else str), "written as the store writes today"
    assert "HarnUserPw" not in rewritten and "HarnApiKey" not in rewritten
    assert cleaned.label == "harn.1203023006" and cleaned.scrub_rule
    report = Report()
    _check_stored_credentials(app.extensions["dolibarr_webhooks"].settings, store, report)
    assert [f.level for f in report.findings] == ["ok"]
    assert command(app, "scrub", "--json") == {"read": 0, "changed": 0}, "nothing left to do"


def test_schemas_4_and_later_are_added_to_a_version_3_store(make_app, database_url):
    app = make_app()
    store = app.extensions["dolibarr_webhooks"].store
    with store.engine.begin() as conn:  # back to what version 3 made
        for index in ("ix_events_code_search", "ix_events_ref_search", "ix_events_label_search",
                      "ix_deliveries_delivered", "ix_attempts_started"):  # version 6's
            conn.execute(text(f"DROP INDEX {index}"))
        conn.execute(text("DROP TABLE workers"))
        conn.execute(text("DROP INDEX ix_events_object"))
        conn.execute(text("DROP INDEX ix_events_scrub_rule"))
        conn.execute(text("ALTER TABLE events DROP COLUMN label"))
        conn.execute(text("ALTER TABLE events DROP COLUMN scrub_rule"))
        conn.execute(text("DELETE FROM schema_migrations WHERE version >= 4"))
    assert store.schema_version() == 3
    assert store.migrate() == list(range(4, SCHEMA_VERSION + 1))
    response = app.test_client().post(f"/webhook/{WEBHOOKS_TEST_SECRET}",
                                      data=(MORE / "02_COMPANY_CREATE.json").read_bytes())
    assert response.status_code == 200, response.json
    assert command(app, "history", "societe", "16", "--json")[0]["label"] == LABELS["02_COMPANY_CREATE"]


@pytest.mark.parametrize("code, state", [("BILL_VALIDATE", "validated"), ("BILL_SUPPLIER_CANCEL", "cancelled"),
                                         ("PROJECT_CLOSE", "closed"), ("PRODUCT_DELETE", "deleted"),
                                         ("COMPANY_MODIFY", None)])
def test_state_implied_by_the_code(code, state):
    assert event_from_body(f'{{"triggercode":"{code}","object":{{"id":1}}}}'.encode()).state == state


def test_log_lines_and_messages_name_the_object_by_its_label():
    from dolibarr_webhooks.describe import summary

    for name, label in LABELS.items():
        event = event_from_body((MORE / f"{name}.json").read_bytes())
        assert label in summary(event), name
    assert summary(event_from_body((MORE / "21_SHIPPING_CREATE.json").read_bytes())) == "Shipment #6 created"
    assert summary(event_from_body((MORE / "50_USER_CREATE.json").read_bytes()), "fr") == \
        "Utilisateur harn.1203023006 créé"


def test_stale_events_are_found_by_rule_and_source(make_app):
    from dolibarr_webhooks.pipeline.parse import event_from_body as parse

    store = make_app().extensions["dolibarr_webhooks"].store
    raw = (MORE / "52_USER_MODIFY.json").read_bytes()
    for number, (source, rule) in enumerate([("shop", "A"), ("shop", "A"), ("erp", "B"), ("erp", "A"),
                                             ("gone", "A"), ("gone", None)]):
        event = parse(raw.replace(b'"id":"12"', f'"id":"{number}"'.encode()), source=source)
        store.ingest(event, [], scrub_rule=rule)
    assert store.scrub_rules_in_use() == {"A", "B", None}
    # shop and sources no longer configured expect A, erp expects B.
    assert store.count_stale({"shop": "A", "erp": "B"}, default="A") == 2  # erp's A, gone's None
    assert store.count_stale({"shop": "A", "erp": "A"}, default="A") == 2  # erp's B, gone's None
    assert store.count_stale({"shop": "B", "erp": "B"}, default="B") == 5
