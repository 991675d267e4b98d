"""The published shape: pip install into a fresh venv, real gunicorn and worker, real SMTP on loopback."""

from __future__ import annotations

import json
import time
import textwrap
from pathlib import Path

import pytest

from dolibarr_webhooks import testing

ROOT = Path(__file__).resolve().parents[3]  # the repository: the core's project
PLUGIN = Path(__file__).resolve().parents[1]

RULES = textwrap.dedent("""\
    [plugins.email]
    rules = [
        { events = ["COMPANY_CREATE"], to_field = "email", template = "welcome", language = "fr" },
        { events = ["BILL_PAYED"], to = ["Accounting <accounting@example.com>"] },
    ]
""")


def smtp_env(server) -> dict[str, str]:
    """The plugin's server settings, for processes, pointing at the loopback SMTP ``server``."""
    return {
        "DOLIBARR_WEBHOOKS_EMAIL_HOST": server.host,
        "DOLIBARR_WEBHOOKS_EMAIL_PORT": str(server.port),
        "DOLIBARR_WEBHOOKS_EMAIL_SECURITY": "none",
        "DOLIBARR_WEBHOOKS_EMAIL_TIMEOUT": "5",
        "DOLIBARR_WEBHOOKS_EMAIL_FROM": "Acme <erp@example.com>",
    }


@pytest.mark.slow
def test_email_welcome_and_invoice_paid_arrive(tmp_path, smtp_server):
    python = testing.fresh_venv(tmp_path / "venv", ROOT, PLUGIN)
    config_file = tmp_path / "dolibarr-webhooks.toml"
    config_file.write_text(RULES, encoding="utf-8")
    env = {
        **smtp_env(smtp_server),
        "DOLIBARR_WEBHOOKS_CONFIG": str(config_file),
        "DOLIBARR_WEBHOOKS_DOLIBARR_URL": "https://erp.example",
    }
    with testing.running_service(python, env=env) as service:
        listed = service.cli("plugins", "--json")
        assert '"email"' in listed.stdout  # found through its entry point in the fresh venv

        assert service.post("PRODUCT_CREATE").status_code < 300  # matches no rule
        assert service.post("COMPANY_CREATE").status_code < 300
        assert service.post("BILL_PAYED").status_code < 300
        received = smtp_server.handler.wait_for(2, timeout=30)
        assert len(received) >= 2, f"{len(received)} email(s) received; service logs:\n{service.logs()}"
        service.wait_delivered(2, plugin="email")
        time.sleep(1)  # room for a wrong third email (PRODUCT_CREATE) to arrive

    assert len(received) == 2, [r.message["Subject"] for r in received]
    by_recipient = {tuple(r.rcpt_tos): r for r in received}
    welcome = by_recipient[("billing@acme.example",)]
    assert welcome.message["Subject"] == "Bienvenue, Acme Industries !"
    assert welcome.message["From"] == "Acme <erp@example.com>"
    assert "Votre code client est CU2611-00042" in welcome.text and welcome.html

    paid = by_recipient[("accounting@example.com",)]
    assert paid.message["Subject"] == "[Dolibarr] Invoice FA2611-0042 paid - third party 42 - 2,243.76 EUR"
    assert paid.message["X-Dolibarr-Trigger"] == "BILL_PAYED"
    assert "Total incl. tax: 2,243.76 EUR" in paid.text
    assert '<a href="https://erp.example/compta/facture/card.php?facid=311"' in paid.html


@pytest.mark.slow
def test_dead_deliveries_alert_once_then_one_digest(smtp_server):
    """Real gunicorn and worker; the test plugin ``failer`` refuses every event for good. One dead
    delivery: one alert. Forty more after the interval: one alert, then one digest of the rest."""
    testplugin = pytest.importorskip("dolibarr_webhooks_testplugin", reason="the failer is in tests/testplugin")
    interval = 10  # seconds: long enough for forty events to go dead inside it on a busy machine
    env = {
        **smtp_env(smtp_server),
        "DOLIBARR_WEBHOOKS_EMAIL_ALERT_TO": "ops@example.com",  # alerts only: no rule
        "DOLIBARR_WEBHOOKS_FAILER_MODE": "permanent",
        "DOLIBARR_WEBHOOKS_ALERT_INTERVAL": f"{interval}s",
    }

    def dead(service) -> int:
        return service.stats()["plugins"].get("failer", {}).get("dead", 0)

    with testing.running_service(env=env) as service:
        plugins = {p["name"]: p for p in json.loads(service.cli("plugins", "--json").stdout)}
        assert plugins["email"]["status"] == "enabled" and plugins["email"]["events"] == []

        assert service.post(testplugin.body("BILL_PAYED", object_id=1)).status_code < 300
        (first,) = smtp_server.handler.wait_for(1, timeout=30) or [None]
        assert first is not None, service.logs(tail=4000)
        time.sleep(interval + 2)  # nothing held: no digest may follow
        assert len(smtp_server.received) == 1

        for number in range(2, 42):
            assert service.post(testplugin.body("BILL_PAYED", object_id=number)).status_code < 300
        testing.wait_for(lambda: dead(service) == 41, 30, interval=0.2, message=lambda: service.logs(tail=4000))
        received = smtp_server.handler.wait_for(3, timeout=interval + 30)
        time.sleep(2)  # room for a wrong fourth message

    assert [r.message["Subject"] for r in received] == [
        "dolibarr-webhooks: failer delivery dead",
        "dolibarr-webhooks: failer delivery dead",
        f"dolibarr-webhooks: 39 more failer deliveries dead in the last {interval} s",
    ]
    assert all(r.rcpt_tos == ["ops@example.com"] for r in received)
    text = first.text.replace("\r\n", "\n")
    assert "A delivery of the failer plugin went dead" in text
    assert "Invoice FA2611-0042 paid" in text and "failer refuses this event for good" in text
    assert "dolibarr-webhooks replay evt_" in text and "--plugin failer" in text
    digest = received[2].text.replace("\r\n", "\n")
    assert "... and 19 more." in digest and "dolibarr-webhooks replay --dead --plugin failer" in digest
