"""handle_event against a real SMTP server (aiosmtpd) on loopback: what arrives, and how failures sort."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl

import pytest

import dolibarr_webhooks_email as plugin
from dolibarr_webhooks import PermanentFailure


def test_user_stories_welcome_and_invoice_paid(smtp_server, email_config, dolibarr_event):
    """The README's two stories: a French welcome to the new customer, the paid invoice to accounting."""
    config = email_config(smtp_server, reply_to="sales@acme.example", rules=[
        {"events": ["COMPANY_CREATE"], "to_field": "email", "template": "welcome", "language": "fr"},
        {"events": ["BILL_PAYED"], "to": ["Accounting <accounting@acme.example>"]},
    ])
    settings = plugin.read_settings(config=config)
    assert plugin.handled_events(settings=settings) == ["BILL_PAYED", "COMPANY_CREATE"]

    plugin.handle_event(event=dolibarr_event("COMPANY_CREATE"), settings=settings)
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)

    welcome, paid = smtp_server.received
    assert welcome.rcpt_tos == ["billing@acme.example"] and welcome.mail_from == "erp@acme.example"
    assert welcome.message["Subject"] == "Bienvenue, Acme Industries !"
    assert welcome.message["From"] == "Dolibarr <erp@acme.example>"
    assert welcome.message["Reply-To"] == "sales@acme.example"
    assert welcome.message.get_content_type() == "multipart/alternative"
    assert "Votre code client est CU2611-00042" in welcome.text
    assert "<strong>CU2611-00042</strong>" in welcome.html

    assert paid.rcpt_tos == ["accounting@acme.example"]
    assert paid.message["To"] == "Accounting <accounting@acme.example>"
    assert paid.message["Subject"] == "[Dolibarr] Invoice FA2611-0042 paid - third party 42 - 2,243.76 EUR"
    assert "Total incl. tax: 2,243.76 EUR" in paid.text
    assert "Open in Dolibarr: https://erp.example/compta/facture/card.php?facid=311" in paid.text
    assert '<a href="https://erp.example/compta/facture/card.php?facid=311"' in paid.html
    assert "2,243.76 EUR" in paid.html


def test_events_matching_no_rule_send_nothing(smtp_server, email_config, dolibarr_event):
    config = email_config(smtp_server, to="accounting@acme.example", events="BILL_*,INVOICE_PAID")
    settings = plugin.read_settings(config=config)
    plugin.handle_event(event=dolibarr_event("COMPANY_CREATE"), settings=settings)
    assert smtp_server.received == []
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)  # INVOICE_PAID is an alias
    assert len(smtp_server.received) == 1


def test_display_names_with_commas_reach_every_address(smtp_server, email_config, dolibarr_event):
    config = email_config(smtp_server, to='"Doe, John" <john@acme.example>, Zoé <zoe@acme.example>')
    settings = plugin.read_settings(config=config)
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    (sent,) = smtp_server.received
    assert sent.rcpt_tos == ["john@acme.example", "zoe@acme.example"]
    assert [a.display_name for a in sent.message["To"].addresses] == ["Doe, John", "Zoé"]


def test_several_rules_one_connection_non_ascii(smtp_server, email_config, dolibarr_event):
    config = email_config(smtp_server, to="boss@acme.example", language="fr", rules=[
        {"to": ["compta@acme.example"], "subject": "Réglé : {{ ref }}"}])
    settings = plugin.read_settings(config=config)
    plugin.handle_event(event=dolibarr_event("BILL_PAYED", ref="FA-é"), settings=settings)
    boss, compta = smtp_server.received
    assert boss.message["Subject"].startswith("[Dolibarr] Facture FA-é payée")
    assert "Total TTC : 2\u202f243,76 EUR" in boss.text
    assert compta.message["Subject"] == "Réglé : FA-é"
    assert boss.message["Message-ID"] != compta.message["Message-ID"]


def test_no_recipient_is_a_permanent_failure(smtp_server, email_config, dolibarr_event):
    config = email_config(smtp_server, rules=[
        {"events": ["COMPANY_CREATE"], "to_field": "email", "template": "welcome"},
        {"events": ["COMPANY_*"], "to": "sales@acme.example"},
    ])
    settings = plugin.read_settings(config=config)
    with pytest.raises(PermanentFailure, match=r"rules\[0\].*'email'.*1 other message"):
        plugin.handle_event(event=dolibarr_event("COMPANY_CREATE", email=None), settings=settings)
    # The rule that had an address was still served.
    assert [r.rcpt_tos for r in smtp_server.received] == [["sales@acme.example"]]


def test_server_down_is_retried_not_permanent(closed_port, email_config, dolibarr_event, smtp_server):
    smtp_server.port = closed_port
    settings = plugin.read_settings(config=email_config(smtp_server, to="a@acme.example"))
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{closed_port}") as info:
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert not isinstance(info.value, PermanentFailure)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_silent_server_times_out_and_is_retried(email_config, dolibarr_event, smtp_server):
    # Accepts TCP connections (the backlog) but never greets.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        smtp_server.port = silent.getsockname()[1]
        settings = plugin.read_settings(config=email_config(smtp_server, to="a@acme.example", timeout=0.5))
        with pytest.raises(ConnectionError, match="timed out") as info:
            plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert isinstance(info.value.__cause__, smtplib.SMTPServerDisconnected)  # how smtplib reports it


def test_recipient_refused_550_is_permanent(smtp_server, email_config, dolibarr_event):
    smtp_server.handler.rcpt_answers["nobody@acme.example"] = "550 5.1.1 No such user"
    settings = plugin.read_settings(config=email_config(smtp_server, to="nobody@acme.example"))
    with pytest.raises(PermanentFailure, match="nobody@acme.example: 550 5.1.1 No such user"):
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert smtp_server.received == []


def test_recipient_refused_4xx_is_retried(smtp_server, email_config, dolibarr_event):
    smtp_server.handler.rcpt_answers["busy@acme.example"] = "450 4.2.1 Mailbox busy, try later"
    settings = plugin.read_settings(config=email_config(smtp_server, to="busy@acme.example"))
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert not isinstance(info.value, PermanentFailure)


def test_one_refused_recipient_among_several_is_logged(smtp_server, email_config, dolibarr_event, caplog):
    smtp_server.handler.rcpt_answers["gone@acme.example"] = "550 5.1.1 No such user"
    config = email_config(smtp_server, to="gone@acme.example, accounting@acme.example")
    settings = plugin.read_settings(config=config)
    with caplog.at_level(logging.WARNING, logger="dolibarr_webhooks_email"):
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)  # delivered: no retry, no duplicate
    assert smtp_server.received[0].rcpt_tos == ["accounting@acme.example"]
    assert "gone@acme.example: 550" in caplog.text


@pytest.mark.parametrize(("answer", "permanent"), [
    ("554 5.7.1 Message rejected as spam", True),
    ("451 4.3.0 Temporary local problem", False),
])
def test_data_refused(smtp_server, email_config, dolibarr_event, answer, permanent):
    smtp_server.handler.data_answer = answer
    settings = plugin.read_settings(config=email_config(smtp_server, to="a@acme.example"))
    with pytest.raises(Exception) as info:
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert isinstance(info.value, PermanentFailure) is permanent
    assert answer.split(" ", 1)[1] in str(info.value)


def test_starttls_asked_but_not_offered_is_permanent(smtp_server, email_config, dolibarr_event):
    config = email_config(smtp_server, to="a@acme.example", security="starttls")
    settings = plugin.read_settings(config=config)
    with pytest.raises(PermanentFailure, match="STARTTLS"):
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)


def test_starttls_and_auth(starttls_server, certificates, email_config, dolibarr_event):
    user, password = starttls_server.login
    config = email_config(starttls_server, to="a@acme.example", security="starttls", username=user,
                          password=password, ca_file=str(certificates.ca_file))
    settings = plugin.read_settings(config=config)
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    (received,) = starttls_server.received
    assert received.starttls and received.login == user.encode()
    assert "FA2611-0042" in received.message["Subject"]


def test_starttls_wrong_password_is_permanent(starttls_server, certificates, email_config, dolibarr_event):
    config = email_config(starttls_server, to="a@acme.example", security="starttls",
                          username=starttls_server.login[0], password="wrong", ca_file=str(certificates.ca_file))
    settings = plugin.read_settings(config=config)
    with pytest.raises(PermanentFailure, match="535"):
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert starttls_server.received == []


def test_starttls_untrusted_certificate_is_retried(starttls_server, email_config, dolibarr_event):
    # No ca_file: the self-signed test CA is not trusted; a renewed certificate may fix it.
    user, password = starttls_server.login
    config = email_config(starttls_server, to="a@acme.example", security="starttls", username=user,
                          password=password)
    settings = plugin.read_settings(config=config)
    with pytest.raises(ssl.SSLCertVerificationError):
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    assert starttls_server.received == []


def test_implicit_tls(start_smtp, certificates, email_config, dolibarr_event):
    server = start_smtp(ssl_context=certificates.server_context())
    config = email_config(server, to="a@acme.example", security="tls", ca_file=str(certificates.ca_file))
    settings = plugin.read_settings(config=config)
    plugin.handle_event(event=dolibarr_event("PAYMENT_CUSTOMER_CREATE"), settings=settings)
    (received,) = server.received
    assert "2,243.76 EUR" in received.text and "PAY2611-0007" in received.message["Subject"]


def test_settings_and_templates_are_read_once(tmp_path, smtp_server, email_config, dolibarr_event):
    """What read_settings compiled is what deliveries use: a template edited (or removed) after
    start-up changes nothing until the next start, and nothing is parsed per event."""
    (tmp_path / "en").mkdir()
    subject = tmp_path / "en" / "BILL_PAYED.subject.txt"
    subject.write_text("Paid: {{ ref }}")
    config = email_config(smtp_server, to="a@acme.example", templates_dir=str(tmp_path))
    settings = plugin.read_settings(config=config)
    config["to"] = "someone-else@acme.example"  # the raw mapping is not read again
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    subject.write_text("Edited: {{ ref }}")
    plugin.handle_event(event=dolibarr_event("BILL_PAYED", ref="FA-2"), settings=settings)
    subject.unlink()
    plugin.handle_event(event=dolibarr_event("BILL_PAYED", ref="FA-3"), settings=settings)
    assert [r.message["Subject"] for r in smtp_server.received] == ["Paid: FA2611-0042", "Paid: FA-2", "Paid: FA-3"]
    assert all(r.rcpt_tos == ["a@acme.example"] for r in smtp_server.received)


def test_a_forged_lone_surrogate_is_sent_as_its_escape(tmp_path, smtp_server, email_config):
    """A template may quote any field of the object, which a forged body may fill with a lone
    surrogate: the message could not be encoded, and the delivery failed until dead."""
    from dolibarr_webhooks.pipeline.parse import event_from_body

    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "BILL_PAYED.subject.txt").write_text("Paid: {{ object.note }}")
    (tmp_path / "en" / "BILL_PAYED.body.txt").write_text("Note: {{ object.note }}")
    (tmp_path / "en" / "BILL_PAYED.body.html").write_text("<p>{{ object.note }}</p>")
    settings = plugin.read_settings(config=email_config(smtp_server, to="a@acme.example", templates_dir=str(tmp_path)))
    event = event_from_body(b'{"triggercode":"BILL_PAYED","object":{"id":7,"ref":"FA7","note":"x\\ud800y"}}')
    plugin.handle_event(event=event, settings=settings)
    (sent,) = smtp_server.received
    assert sent.message["Subject"] == "Paid: x\\ud800y"
    assert "Note: x\\ud800y" in sent.text and "<p>x\\ud800y</p>" in sent.html
