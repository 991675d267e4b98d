"""The README's configurations are real: they load through the core's settings and, pointed at
a loopback SMTP server, send what the README says."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import dolibarr_webhooks_email as plugin
from dolibarr_webhooks.settings import load_settings, plugin_config
from dolibarr_webhooks.testing import free_port, rst_code_blocks, wait_for, wait_for_port

README = Path(__file__).parents[1] / "README.rst"


def code_blocks(language: str) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of the README, dedented, in order."""
    return rst_code_blocks(README.read_text(encoding="utf-8"), language)


README_LOGIN = ("erp@example.com", "app password")  # the account the README's snippets use


@pytest.fixture
def readme_server(start_smtp, certificates):
    """What the README configures: STARTTLS (the default) and AUTH with the README's account."""
    return start_smtp(tls_context=certificates.server_context(), require_starttls=True, login=README_LOGIN)


@pytest.fixture
def readme_config(tmp_path, readme_server, certificates):
    """``readme_config(env_text=..., toml_text=...)``: the plugin's config as the core builds it
    from the README's snippets, with only the server's address swapped for the loopback one."""

    def build(env_text: str = "", toml_text: str = "") -> dict:
        env_file = tmp_path / ".env"
        env_file.write_text(env_text, encoding="utf-8")
        environ = {"DOLIBARR_WEBHOOKS_EMAIL_HOST": readme_server.host,
                   "DOLIBARR_WEBHOOKS_EMAIL_PORT": str(readme_server.port),
                   "DOLIBARR_WEBHOOKS_EMAIL_CA_FILE": str(certificates.ca_file)}
        if toml_text:
            path = tmp_path / "dolibarr-webhooks.toml"
            path.write_text(toml_text, encoding="utf-8")
            environ["DOLIBARR_WEBHOOKS_CONFIG"] = str(path)
            # "the server settings stay in the environment"
            environ["DOLIBARR_WEBHOOKS_EMAIL_USERNAME"], environ["DOLIBARR_WEBHOOKS_EMAIL_PASSWORD"] = README_LOGIN
        return plugin_config(load_settings(environ=environ, env_file=env_file), "email")

    return build


def block_with(language: str, text: str) -> str:
    return next(block for block in code_blocks(language) if text in block)


def test_welcome_story(readme_config, readme_server, dolibarr_event):
    config = readme_config(env_text=block_with("sh", "TEMPLATE=welcome"))
    settings = plugin.read_settings(config=config)
    assert plugin.handled_events(settings=settings) == ["COMPANY_CREATE"]
    plugin.handle_event(event=dolibarr_event("COMPANY_CREATE"), settings=settings)
    (sent,) = readme_server.received
    assert sent.starttls and sent.login == b"erp@example.com"
    assert sent.rcpt_tos == ["billing@acme.example"]
    assert sent.message["Subject"] == "Bienvenue, Acme Industries !"  # as the README says
    assert sent.message["From"] == "Acme <erp@example.com>" and sent.message["Reply-To"] == "sales@example.com"


def test_invoice_paid_story(readme_config, readme_server, dolibarr_event):
    config = readme_config(env_text=block_with("sh", "EVENTS=BILL_PAYED"))
    settings = plugin.read_settings(config=config)
    assert plugin.handled_events(settings=settings) == ["BILL_PAYED"]
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    (sent,) = readme_server.received
    assert sent.rcpt_tos == ["accounting@example.com"]
    assert sent.mail_from == "erp@example.com"  # FROM defaults to the username
    assert sent.message["Subject"] == "[Dolibarr] Invoice FA2611-0042 paid - third party 42 - 2,243.76 EUR"
    assert "https://erp.example/compta/facture/card.php?facid=311" in sent.text


def test_both_stories_in_toml(readme_config, readme_server, dolibarr_event):
    (toml,) = code_blocks("toml")
    config = readme_config(toml_text=toml)
    settings = plugin.read_settings(config=config)
    assert plugin.handled_events(settings=settings) == ["BILL_PAYED", "COMPANY_CREATE"]
    plugin.handle_event(event=dolibarr_event("COMPANY_CREATE"), settings=settings)
    plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
    welcome, paid = readme_server.received
    assert (welcome.rcpt_tos, welcome.message["Subject"]) == (["billing@acme.example"], "Bienvenue, Acme Industries !")
    assert welcome.message["Reply-To"] == "sales@example.com"
    assert paid.message["To"] == "Accounting <accounting@example.com>"


def test_readme_template_example_renders(tmp_path, dolibarr_event):
    (example,) = code_blocks("jinja")
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "BILL_PAYED.body.html").write_text(example, encoding="utf-8")
    (tmp_path / "en" / "BILL_PAYED.body.txt").write_text("{{ thirdparty }} has paid {{ ref }}.", encoding="utf-8")
    config = {"host": "smtp.example", "from": "erp@example.com", "to": "a@example.com", "templates_dir": str(tmp_path)}
    settings = plugin.read_settings(config=config)  # compiles the folder's templates
    from dolibarr_webhooks_email.render import render_rule

    rendered = render_rule(dolibarr_event("BILL_PAYED"), settings.rules[0], settings.templates)
    assert "<p>third party 42 has paid FA2611-0042.</p>" in rendered.html
    assert "2,243.76 EUR" in rendered.html and "2026-12-27" in rendered.html


@pytest.mark.parametrize("name", ["thirdparty", "contact", "invoice", "payment", "proposal", "order", "product",
                                  "project", "default", "welcome"])
def test_every_documented_template_is_packaged_in_both_languages(name):
    templates = Path(plugin.__file__).parent / "templates"
    for lang in ("en", "fr"):
        for part in ("subject.txt", "body.txt", "body.html"):
            assert (templates / lang / f"{name}.{part}").is_file()
    assert f"``{name}``" in README.read_text(encoding="utf-8")


def test_trying_it_locally(tmp_path, dolibarr_event):
    """The README's local recipe as written, only the port swapped for a free one: its aiosmtpd
    command receives what the plugin sends with its .env settings, and prints the message."""
    command = block_with("sh", "python -m aiosmtpd").strip()
    env_text = block_with("sh", "SECURITY=none")
    port = free_port()
    args = shlex.split(command.replace(":8025", f":{port}"))
    assert args[0] == "python"
    log = tmp_path / "smtp.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, *args[1:]], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_port(port, process=server)
        env_file = tmp_path / ".env"
        env_file.write_text(env_text.replace("PORT=8025", f"PORT={port}"), encoding="utf-8")
        config = plugin_config(load_settings(environ={}, env_file=env_file), "email")
        settings = plugin.read_settings(config=config)
        plugin.handle_event(event=dolibarr_event("BILL_PAYED"), settings=settings)
        printed = wait_for(lambda: "Subject: [Dolibarr] Invoice" in log.read_text() and log.read_text(), 20,
                           message=log.read_text)
    finally:
        server.terminate()
        server.wait(10)
    assert "you@example.com" in printed and "erp@example.com" in printed
