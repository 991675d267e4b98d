"""Templates: packaged ones per family and language, lookup order, user overrides, escaping."""

from __future__ import annotations

import dataclasses
from importlib import metadata

import pytest

import dolibarr_webhooks_email
from dolibarr_webhooks_email.config import parse_settings
from dolibarr_webhooks_email.render import build_message, recipients, render_rule, template_bases
from dolibarr_webhooks_email.templating import Templates

CONFIG = {"host": "smtp.example", "from": "erp@acme.example", "to": "team@acme.example"}


PACKAGED = Templates()  # the packaged templates only, compiled once for the module's tests


def rule(**changes):
    return dataclasses.replace(parse_settings(CONFIG).rules[0], **changes)


def test_the_entry_point_names_the_module():
    (ep,) = [ep for ep in metadata.entry_points(group="dolibarr_webhooks.handlers") if ep.name == "email"]
    assert ep.load() is dolibarr_webhooks_email


@pytest.mark.parametrize(("code", "family", "expected"), [
    ("COMPANY_CREATE", "thirdparty", ["Acme Industries", "CU2611-00042", "billing@acme.example",
                                      "https://erp.example/societe/card.php?socid=42"]),
    ("CONTACT_CREATE", "contact", ["Claire Martin", "Chief Financial Officer", "claire.martin@acme.example",
                                   "https://erp.example/contact/card.php?id=118"]),
    ("BILL_VALIDATE", "invoice", ["FA2611-0042", "2,243.76 EUR", "1,869.80 EUR", "PO-7781", "2026-12-27",
                                  "https://erp.example/compta/facture/card.php?facid=311"]),
    ("PAYMENT_CUSTOMER_CREATE", "payment", ["PAY2611-0007", "2,243.76 EUR", "TR-88231", "invoice #311",
                                            "https://erp.example/compta/paiement/card.php?id=77"]),
    ("PROPAL_CLOSE_SIGNED", "proposal", ["PR2611-0088", "signed", "2,243.76 EUR", "RFQ-2026-118",
                                         "https://erp.example/comm/propal/card.php?id=88"]),
    ("ORDER_VALIDATE", "order", ["CO2611-0021", "2,263.68 EUR", "2026-12-04",
                                 "https://erp.example/commande/card.php?id=21"]),
    ("PRODUCT_CREATE", "product", ["HW-SW24", "Switch 24 ports", "329.90",
                                   "https://erp.example/product/card.php?id=95"]),
    ("PROJECT_CREATE", "project", ["PJ2611-0014", "ERP roll-out Acme", "25,000.00",
                                   "https://erp.example/projet/card.php?id=14"]),
    ("TEST_TRIGGER_CODE", "default", ["TEST_TRIGGER_CODE", "(test)"]),
])
def test_each_family_has_english_text_and_html(dolibarr_event, code, family, expected):
    rendered = render_rule(dolibarr_event(code), rule(), PACKAGED)
    assert rendered.template == f"en/{family}"
    assert rendered.html is not None and rendered.html.startswith("<!DOCTYPE html>")
    for text in expected:
        assert text in rendered.text
        assert text in rendered.html
    assert "\n" not in rendered.subject and rendered.subject.startswith("[Dolibarr] ")


def test_invoice_subject_and_french_rendering(dolibarr_event):
    event = dolibarr_event("BILL_PAYED")
    english = render_rule(event, rule(), PACKAGED)
    assert english.subject == "[Dolibarr] Invoice FA2611-0042 paid - third party 42 - 2,243.76 EUR"
    french = render_rule(event, rule(language="fr"), PACKAGED)
    assert french.template == "fr/invoice"
    assert french.subject == "[Dolibarr] Facture FA2611-0042 payée - tiers 42 - 2\u202f243,76 EUR"
    for text in ("Total TTC : 2\u202f243,76 EUR", "Total HT : 1\u202f869,80 EUR", "Échéance : 27/12/2026",
                 "Ouvrir dans Dolibarr : https://erp.example/compta/facture/card.php?facid=311"):
        assert text in french.text
    assert 'lang="fr"' in french.html and "Ouvrir dans Dolibarr</a>" in french.html


def test_welcome_template_in_both_languages(dolibarr_event):
    event = dolibarr_event("COMPANY_CREATE")
    english = render_rule(event, rule(template="welcome"), PACKAGED)
    assert (english.template, english.subject) == ("en/welcome", "Welcome, Acme Industries!")
    assert "customer code is CU2611-00042" in english.text and "<strong>CU2611-00042</strong>" in english.html
    french = render_rule(event, rule(template="welcome", language="fr"), PACKAGED)
    assert french.subject == "Bienvenue, Acme Industries !"
    assert "Votre code client est CU2611-00042" in french.text
    # Made for the customer: no link into the back office.
    assert "erp.example" not in french.text + french.html


def test_html_is_autoescaped_and_text_is_not(dolibarr_event):
    event = dolibarr_event("COMPANY_CREATE", name="Smith & <b>Sons</b>", url='https://x.example/"><script>')
    rendered = render_rule(event, rule(), PACKAGED)
    assert "Smith &amp; &lt;b&gt;Sons&lt;/b&gt;" in rendered.html
    assert "<script>" not in rendered.html and "&#34;&gt;&lt;script&gt;" in rendered.html
    assert "Name: Smith & <b>Sons</b>" in rendered.text
    assert "Smith & <b>Sons</b>" in rendered.subject


def test_missing_link_and_amounts_are_left_out(dolibarr_event):
    event = dolibarr_event("BILL_PAYED", dolibarr_url=None, total_tva=None, multicurrency_code=None)
    rendered = render_rule(event, rule(), PACKAGED)
    assert "Open in Dolibarr" not in rendered.text + rendered.html
    assert "VAT" not in rendered.text and "Total incl. tax: 2,243.76\n" in rendered.text


def test_lookup_order(dolibarr_event):
    event = dolibarr_event("BILL_PAYED")
    assert template_bases(event, rule(language="fr", template="thanks")) == [
        "fr/thanks", "fr/BILL_PAYED", "fr/invoice", "fr/default"]
    # No element in the object: the family still comes from the code.
    assert template_bases(dolibarr_event("ORDER_VALIDATE", element=None), rule()) == [
        "en/ORDER_VALIDATE", "en/order", "en/default"]
    assert template_bases(dolibarr_event("TEST_TRIGGER_CODE"), rule()) == ["en/TEST_TRIGGER_CODE", "en/default"]


def test_user_folder_overrides_per_part(tmp_path, dolibarr_event):
    (tmp_path / "en").mkdir()
    # Subject for this code only; the body stays the packaged invoice one.
    (tmp_path / "en" / "BILL_PAYED.subject.txt").write_text("Paid: {{ ref }} ({{ total_ttc }})\n")
    # A text-only family override: the packaged HTML of that family must not come with it.
    (tmp_path / "en" / "order.body.txt").write_text("Order {{ ref }} for {{ object.total_ttc | money }}")
    # A user's template can extend the packaged layout.
    (tmp_path / "en" / "product.body.html").write_text(
        '{% extends "en/_layout.body.html" %}{% block intro %}New in the catalogue: {{ name }}{% endblock %}')
    (tmp_path / "en" / "product.body.txt").write_text("New in the catalogue: {{ name }}")
    user = Templates(str(tmp_path))  # read once, like the plugin at start-up
    paid = render_rule(dolibarr_event("BILL_PAYED"), rule(), user)
    assert paid.subject == "Paid: FA2611-0042 (2,243.76 EUR)"
    assert paid.template == "en/invoice" and "Total incl. tax: 2,243.76 EUR" in paid.text
    order = render_rule(dolibarr_event("ORDER_VALIDATE"), rule(), user)
    assert (order.template, order.text, order.html) == ("en/order", "Order CO2611-0021 for 2,263.68 EUR\n", None)
    product = render_rule(dolibarr_event("PRODUCT_CREATE"), rule(), user)
    assert "<p>New in the catalogue: Switch 24 ports</p>" in product.html
    assert "https://erp.example/product/card.php?id=95" in product.html


def test_rule_subject_replaces_subject_templates(dolibarr_event):
    rendered = render_rule(dolibarr_event("BILL_PAYED"), rule(subject="To book: {{ ref }}\n{{ total_ttc }}"), PACKAGED)
    assert rendered.subject == "To book: FA2611-0042 2,243.76 EUR"


def test_recipients_from_fixed_addresses_and_the_object(dolibarr_event):
    event = dolibarr_event("COMPANY_CREATE", email="Billing <billing@acme.example>; ceo@acme.example")
    assert recipients(event, rule(to=("team@acme.example", "ceo@ACME.example"), to_field="email")) == [
        "team@acme.example", "ceo@ACME.example", "Billing <billing@acme.example>"]
    assert recipients(dolibarr_event("COMPANY_CREATE", email="n/a"), rule(to=(), to_field="email")) == []
    nested = dolibarr_event("BILL_PAYED", thirdparty={"name": "Acme", "email": "acme@acme.example"})
    assert recipients(nested, rule(to=(), to_field="thirdparty.email")) == ["acme@acme.example"]


def test_message_headers_and_parts(dolibarr_event):
    event = dolibarr_event("BILL_PAYED")
    r = rule(reply_to="accounting@acme.example")
    msg = build_message(event, r, render_rule(event, r, PACKAGED), ["a@acme.example", "B <b@acme.example>"])
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["To"] == "a@acme.example, B <b@acme.example>"
    assert msg["Reply-To"] == "accounting@acme.example" and msg["Auto-Submitted"] == "auto-generated"
    assert msg["Message-ID"] == f"<{event.id}.0@acme.example>"  # stable across retries
    assert msg["X-Dolibarr-Trigger"] == "BILL_PAYED"
