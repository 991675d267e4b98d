"""Messages posted to a real local server that answers as Slack does, and what each answer means."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

import dolibarr_webhooks_slack as slack_plugin
from dolibarr_webhooks import PermanentFailure, RetryLater
from dolibarr_webhooks.describe import summary

# The fake Slack listens on plain http, which read_settings warns about (see test_slack_config).
pytestmark = pytest.mark.filterwarnings("ignore:.*uses plain http:UserWarning")


def only_message(slack):
    posted = slack.posted()
    assert len(posted) == 1, posted
    return posted[0]["json"]


def blocks_of(message, kind):
    return [b for b in message["blocks"] if b["type"] == kind]


def field_texts(message):
    return [f["text"] for b in blocks_of(message, "section") for f in b.get("fields", [])]


def button_urls(message):
    return [e["url"] for b in blocks_of(message, "actions") for e in b["elements"]]


# code: (header, field texts that must be there, card URL)
FAMILIES = {
    "PROPAL_CLOSE_SIGNED": (":memo: Proposal PR2611-0088 signed",
                            ["*Ref*\n<https://erp.example/comm/propal/card.php?id=88|PR2611-0088>",
                             "*Amount incl. tax*\n2,243.76 EUR", "*Status*\nSigned",
                             "*Third party*\n<https://erp.example/societe/card.php?socid=42|third party 42>",
                             "*Customer ref*\nRFQ-2026-118"],
                            "https://erp.example/comm/propal/card.php?id=88"),
    "BILL_PAYED": (":receipt: Invoice FA2611-0042 paid",
                   ["*Ref*\n<https://erp.example/compta/facture/card.php?facid=311|FA2611-0042>",
                    "*Amount incl. tax*\n2,243.76 EUR", "*Status*\nPaid"],
                   "https://erp.example/compta/facture/card.php?facid=311"),
    # On *_VALIDATE Dolibarr sends the provisional ref and the draft status.
    "ORDER_VALIDATE": (":package: Order CO2611-0021 validated",
                       ["*Ref*\n<https://erp.example/commande/card.php?id=21|CO2611-0021>",
                        "*Amount incl. tax*\n2,263.68 EUR", "*Status*\nValidated"],
                       "https://erp.example/commande/card.php?id=21"),
    "PAYMENT_CUSTOMER_CREATE": (":moneybag: Customer payment PAY2611-0007 created",
                                ["*Amount*\n2,243.76 EUR",
                                 "*Invoices*\n<https://erp.example/compta/facture/card.php?facid=311|#311>",
                                 "*Number*\nTR-88231"],
                                "https://erp.example/compta/paiement/card.php?id=77"),
    "COMPANY_CREATE": (":office: Third party Acme Industries created",
                       ["*Name*\n<https://erp.example/societe/card.php?socid=42|Acme Industries>",
                        "*Customer code*\nCU2611-00042", "*Email*\nbilling@acme.example"],
                       "https://erp.example/societe/card.php?socid=42"),
    "CONTACT_CREATE": (":bust_in_silhouette: Contact Claire Martin created",
                       ["*Job title*\nChief Financial Officer", "*Email*\nclaire.martin@acme.example"],
                       "https://erp.example/contact/card.php?id=118"),
    "PRODUCT_CREATE": (":label: Product HW-SW24 created",
                       ["*Label*\nSwitch 24 ports", "*Price excl. tax*\n329.90", "*Type*\nProduct"],
                       "https://erp.example/product/card.php?id=95"),
    "PROJECT_CREATE": (":file_folder: Project PJ2611-0014 created",
                       ["*Title*\nERP roll-out Acme", "*Status*\nDraft", "*Budget*\n25,000.00"],
                       "https://erp.example/projet/card.php?id=14"),
}


@pytest.mark.parametrize("code", sorted(FAMILIES))
def test_slack_message_per_family(slack, make_event, code):
    header, fields, card = FAMILIES[code]
    event = make_event(code)
    slack_plugin.handle_event(event=event, settings=slack_plugin.read_settings(config={"webhook_url": slack.url("ok")}))
    message = only_message(slack)
    assert message["text"] == summary(event)  # the notification fallback
    assert blocks_of(message, "header")[0]["text"] == {"type": "plain_text", "emoji": True, "text": header}
    texts = field_texts(message)
    for expected in fields:
        assert expected in texts
    assert button_urls(message) == [card]
    assert f"`{code}`" in blocks_of(message, "context")[0]["elements"][0]["text"]
    assert message["unfurl_links"] is False


def test_slack_generic_event_and_test_marker(slack, make_event):
    event = make_event("TEST_TRIGGER_CODE")
    slack_plugin.handle_event(event=event, settings=slack_plugin.read_settings(config={"webhook_url": slack.url("ok")}))
    message = only_message(slack)
    assert blocks_of(message, "header")[0]["text"]["text"] == ":bell: TEST_TRIGGER_CODE"
    assert "*Trigger code*\n`TEST_TRIGGER_CODE`" in field_texts(message)
    assert button_urls(message) == []  # no object, no card
    assert "*test event*" in blocks_of(message, "context")[0]["elements"][0]["text"]


def test_slack_unknown_code_keeps_ref_and_object(slack, make_event):
    body_event = make_event("PROPAL_CLOSE_SIGNED")
    event = type(body_event)(**{**body_event.__dict__, "trigger_code": "PROPAL_MYMODULE_STAMPED"})
    slack_plugin.handle_event(event=event, settings=slack_plugin.read_settings(config={"webhook_url": slack.url("ok")}))
    message = only_message(slack)
    assert blocks_of(message, "header")[0]["text"]["text"] == ":memo: PROPAL_MYMODULE_STAMPED PR2611-0088"
    assert "*Amount incl. tax*\n2,243.76 EUR" in field_texts(message)


def test_slack_french(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("ok"), "language": "fr"})
    slack_plugin.handle_event(event=make_event("PROPAL_CLOSE_SIGNED"), settings=settings)
    message = only_message(slack)
    assert blocks_of(message, "header")[0]["text"]["text"] == ":memo: Proposition commerciale PR2611-0088 signée"
    assert "*Montant TTC*\n2\u202f243,76 EUR" in field_texts(message)
    assert blocks_of(message, "actions")[0]["elements"][0]["text"]["text"] == "Ouvrir dans Dolibarr"


def test_slack_amount_in_document_currency(slack, make_event):
    # total_ttc is in the company's currency; the document's own amount is multicurrency_total_ttc.
    event = make_event("BILL_PAYED", multicurrency_code="USD", multicurrency_total_ttc="2456.01000000")
    slack_plugin.handle_event(event=event, settings=slack_plugin.read_settings(config={"webhook_url": slack.url("ok")}))
    assert "*Amount incl. tax*\n2,456.01 USD" in field_texts(only_message(slack))


def test_slack_without_dolibarr_url_has_no_links(slack, make_event):
    slack_plugin.handle_event(event=make_event("BILL_PAYED", dolibarr_url=None),
                              settings=slack_plugin.read_settings(config={"webhook_url": slack.url("ok")}))
    message = only_message(slack)
    assert blocks_of(message, "actions") == []
    assert "*Ref*\nFA2611-0042" in field_texts(message)
    assert "*Third party*\nthird party 42" in field_texts(message)


def test_slack_escapes_mrkdwn_and_keeps_limits(slack, make_event):
    name = "Smith & <Sons> " + "x" * 300
    event = make_event("COMPANY_CREATE", name=name, email="a&b@<example>")
    slack_plugin.handle_event(event=event, settings=slack_plugin.read_settings(config={"webhook_url": slack.url("ok")}))
    message = only_message(slack)  # the server answered 200: the blocks passed its Block Kit checks
    header = blocks_of(message, "header")[0]["text"]["text"]
    assert header.startswith(":office: Third party Smith & <Sons> xxx") and len(header) == 150
    texts = field_texts(message)
    assert any(t.startswith("*Name*\n<https://erp.example/societe/card.php?socid=42|Smith &amp; &lt;Sons&gt; x")
               for t in texts)
    assert "*Email*\na&amp;b@&lt;example&gt;" in texts
    assert "<Sons>" not in message["text"] and "Smith &amp; &lt;Sons&gt;" in message["text"]


def test_slack_block_kit_checks_of_the_server_can_fail(slack):
    # The fake endpoint refuses what Slack refuses, so the tests above are meaningful.
    too_long = {"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}
    response = slack_plugin.WebhookClient(slack.url("ok"), retry_handlers=[]).send(text="x", blocks=[too_long])
    with pytest.raises(PermanentFailure, match="400 invalid_blocks: blocks.0. .header.: text must have 1 to 150"):
        slack_plugin.check_response(response)


@pytest.mark.parametrize(("answer", "status"), [("invalid_payload", 400), ("invalid_token", 403),
                                                ("no_service", 404), ("channel_is_archived", 410)])
def test_slack_refusals_are_permanent(slack, make_event, answer, status):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url(answer)})
    with pytest.raises(PermanentFailure) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert f"{status} {answer}" in str(caught.value)
    assert "T000TEAM" not in str(caught.value)  # the URL is a secret; failures are stored and shown
    assert len(slack.posted()) == 1


def test_slack_rate_limit_retries_after_what_slack_asks(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("rate_limited")})
    with pytest.raises(RetryLater) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert caught.value.after == 7
    assert "429 rate_limited" in str(caught.value)
    assert len(slack.posted()) == 1  # the SDK's own retries are off: the core's queue retries


def test_slack_unavailable_with_retry_after(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("unavailable")})
    with pytest.raises(RetryLater) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert caught.value.after == 3


def test_slack_server_error_is_retried_with_backoff(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("server_error")})
    with pytest.raises(Exception) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert not isinstance(caught.value, (PermanentFailure, RetryLater))
    assert "500 internal_error" in str(caught.value)


def test_slack_unreachable_is_retried_with_backoff(make_event, closed_port_url):
    settings = slack_plugin.read_settings(config={"webhook_url": closed_port_url})
    with pytest.raises(Exception) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert not isinstance(caught.value, (PermanentFailure, RetryLater))
    assert "cannot reach Slack" in str(caught.value)


def test_slack_timeout_is_retried_with_backoff(slack, make_event):
    settings = slack_plugin.read_settings(config={"webhook_url": slack.url("slow"), "timeout": 0.3})
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)
    assert time.monotonic() - started < 1.2
    assert not isinstance(caught.value, (PermanentFailure, RetryLater))


def test_slack_retry_after_as_http_date():
    later = formatdate(time.time() + 30, usegmt=True)
    assert 25 <= slack_plugin.retry_after({"retry-after": later}) <= 30
    assert slack_plugin.retry_after({"Retry-After": "12"}) == 12
    assert slack_plugin.retry_after({"Retry-After": "soon"}) is None
    assert slack_plugin.retry_after({}) is None


def test_slack_rules_route_events_to_their_channel(slack, make_event):
    config = {"rules": [
        {"events": ["PROPAL_CLOSE_SIGNED"], "webhook_url": slack.url("ok", channel="SALES")},
        {"events": ["INVOICE_PAID", "PAYMENT_*"], "webhook_url": slack.url("ok", channel="ACCOUNTING")},
    ]}
    settings = slack_plugin.read_settings(config=config)
    slack_plugin.handle_event(event=make_event("PROPAL_CLOSE_SIGNED"), settings=settings)
    slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=settings)  # INVOICE_PAID is its alias
    slack_plugin.handle_event(event=make_event("PAYMENT_CUSTOMER_CREATE"), settings=settings)
    slack_plugin.handle_event(event=make_event("COMPANY_CREATE"), settings=settings)  # no rule: nothing sent
    sales = [r["json"]["blocks"][0]["text"]["text"] for r in slack.posted("SALES")]
    accounting = [r["json"]["blocks"][0]["text"]["text"] for r in slack.posted("ACCOUNTING")]
    assert sales == [":memo: Proposal PR2611-0088 signed"]
    assert accounting == [":receipt: Invoice FA2611-0042 paid", ":moneybag: Customer payment PAY2611-0007 created"]


def test_slack_one_message_per_channel(slack, make_event):
    config = {"webhook_url": slack.url("ok"),
              "rules": [{"events": ["BILL_*"], "webhook_url": slack.url("ok"), "language": "fr"}]}
    slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=slack_plugin.read_settings(config=config))
    assert len(slack.posted()) == 1


def test_slack_a_broken_channel_does_not_starve_the_others(slack, make_event):
    config = {"rules": [{"webhook_url": slack.url("no_service", channel="OLD")},
                        {"webhook_url": slack.url("ok", channel="SALES")}]}
    with pytest.raises(PermanentFailure, match="rule 0: Slack answered 404 no_service"):
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=slack_plugin.read_settings(config=config))
    assert len(slack.posted("SALES")) == 1


def test_slack_several_failures_retry_if_any_can_succeed(slack, make_event):
    config = {"rules": [{"webhook_url": slack.url("no_service", channel="OLD")},
                        {"webhook_url": slack.url("rate_limited", channel="BUSY")},
                        {"webhook_url": slack.url("unavailable", channel="DOWN")}]}
    with pytest.raises(RetryLater) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=slack_plugin.read_settings(config=config))
    assert caught.value.after == 7
    assert "404 no_service" in str(caught.value) and "503 service_unavailable" in str(caught.value)

    config["rules"].append({"webhook_url": slack.url("server_error", channel="BROKEN")})
    with pytest.raises(Exception) as caught:
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=slack_plugin.read_settings(config=config))
    assert not isinstance(caught.value, (PermanentFailure, RetryLater))

    config = {"rules": [{"webhook_url": slack.url("no_service", channel="OLD")},
                        {"webhook_url": slack.url("invalid_token", channel="REVOKED")}]}
    with pytest.raises(PermanentFailure, match="403 invalid_token"):
        slack_plugin.handle_event(event=make_event("BILL_PAYED"), settings=slack_plugin.read_settings(config=config))
