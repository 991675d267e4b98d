"""Settings: what disables the plugin, what stops start-up (naming the setting), what rules come out."""

from __future__ import annotations

import pytest

import dolibarr_webhooks_email as plugin
from dolibarr_webhooks import ConfigError, PluginDisabled
from dolibarr_webhooks_email.config import parse_settings

BASE = {"host": "smtp.example", "from": "erp@acme.example", "to": "accounting@acme.example"}


def settings(**changes):
    config = {**BASE, **changes}
    return parse_settings({k: v for k, v in config.items() if v is not None})


def test_no_host_disables_the_plugin():
    with pytest.raises(PluginDisabled, match="DOLIBARR_WEBHOOKS_EMAIL_HOST"):
        plugin.read_settings(config={})
    with pytest.raises(PluginDisabled, match="ignored"):
        plugin.read_settings(config={"to": "a@example.com"})


def test_defaults_from_the_simple_env_configuration():
    s = settings()
    assert (s.host, s.port, s.security, s.timeout) == ("smtp.example", 587, "starttls", 20.0)
    (rule,) = s.rules
    assert rule.to == ("accounting@acme.example",)
    assert rule.events is None and rule.language == "en" and rule.sender == "erp@acme.example"
    assert plugin.handled_events(settings=plugin.read_settings(config=BASE)) is None  # every event


@pytest.mark.parametrize(("security", "port", "expected"), [
    ("tls", None, ("tls", 465)),
    (None, 465, ("tls", 465)),
    ("none", None, ("none", 25)),
    ("STARTTLS", "2525", ("starttls", 2525)),
])
def test_security_and_port(security, port, expected):
    s = settings(security=security, port=port)
    assert (s.security, s.port) == expected


@pytest.mark.parametrize(("changes", "setting"), [
    ({"security": "ssl"}, "DOLIBARR_WEBHOOKS_EMAIL_SECURITY"),
    ({"port": "smtp"}, "DOLIBARR_WEBHOOKS_EMAIL_PORT"),
    ({"port": 70000}, "DOLIBARR_WEBHOOKS_EMAIL_PORT"),
    ({"port": True}, "DOLIBARR_WEBHOOKS_EMAIL_PORT"),
    ({"timeout": "soon"}, "DOLIBARR_WEBHOOKS_EMAIL_TIMEOUT"),
    ({"timeout": 0}, "DOLIBARR_WEBHOOKS_EMAIL_TIMEOUT"),
    ({"language": "de"}, "DOLIBARR_WEBHOOKS_EMAIL_LANGUAGE"),
    ({"from": None}, "DOLIBARR_WEBHOOKS_EMAIL_FROM"),
    ({"from": "not an address"}, "DOLIBARR_WEBHOOKS_EMAIL_FROM"),
    ({"to": "accounting"}, "DOLIBARR_WEBHOOKS_EMAIL_TO"),
    ({"to": None}, "DOLIBARR_WEBHOOKS_EMAIL_TO"),
    ({"to": None, "events": "BILL_PAYED"}, "DOLIBARR_WEBHOOKS_EMAIL_TO"),
    ({"password": "x"}, "DOLIBARR_WEBHOOKS_EMAIL_USERNAME"),
    ({"templates_dir": "/nonexistent/templates"}, "DOLIBARR_WEBHOOKS_EMAIL_TEMPLATES_DIR"),
    ({"ca_file": "/nonexistent/ca.pem"}, "DOLIBARR_WEBHOOKS_EMAIL_CA_FILE"),
    # A name longer than the system takes: an OSError, once "its settings could not be read".
    ({"templates_dir": "t" * 300}, "DOLIBARR_WEBHOOKS_EMAIL_TEMPLATES_DIR"),
    ({"ca_file": "c" * 300}, "DOLIBARR_WEBHOOKS_EMAIL_CA_FILE"),
    ({"recipients": "a@example.com"}, "DOLIBARR_WEBHOOKS_EMAIL_RECIPIENTS"),
    ({"rules": {"to": "x@example.com"}}, "[plugins.email] rules"),
    ({"rules": ["x@example.com"]}, "[plugins.email] rules[0]"),
    ({"rules": [{"events": ["BILL_PAYED"]}]}, "[plugins.email] rules[0].to"),
    ({"rules": [{"to": "a@example.com", "language": "es"}]}, "[plugins.email] rules[0].language"),
    ({"rules": [{"to": "a@example.com", "recipient": "b@example.com"}]}, "[plugins.email] rules[0].recipient"),
    ({"rules": [{"to": "a@example.com", "template": "../etc/passwd"}]}, "[plugins.email] rules[0].template"),
])
def test_bad_settings_name_the_setting(changes, setting):
    with pytest.raises(ConfigError) as info:
        plugin.read_settings(config={k: v for k, v in {**BASE, **changes}.items() if v is not None})
    assert info.value.setting == setting


def test_start_up_checks_template_names_and_subjects(tmp_path):
    with pytest.raises(ConfigError) as info:
        plugin.read_settings(config={**BASE, "template": "no-such-template"})
    assert info.value.setting == "DOLIBARR_WEBHOOKS_EMAIL_TEMPLATE"
    assert "en/no-such-template.body.txt" in info.value.message
    with pytest.raises(ConfigError) as info:
        plugin.read_settings(config={**BASE, "rules": [{"to": "a@example.com", "subject": "{{ ref "}]})
    assert info.value.setting == "[plugins.email] rules[0].subject"
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "BILL_PAYED.body.txt").write_text("Paid {% if ref %}\n")
    with pytest.raises(ConfigError) as info:
        plugin.read_settings(config={**BASE, "templates_dir": str(tmp_path)})
    assert info.value.setting == "DOLIBARR_WEBHOOKS_EMAIL_TEMPLATES_DIR"
    assert "en/BILL_PAYED.body.txt" in info.value.message
    # A template saved in Latin-1: the file and the fix named, not a UnicodeDecodeError.
    (tmp_path / "en" / "BILL_PAYED.body.txt").write_bytes("Facture payée {{ ref }}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        plugin.read_settings(config={**BASE, "templates_dir": str(tmp_path)})
    assert info.value.message == "en/BILL_PAYED.body.txt: not UTF-8 text (byte 0xe9 at offset 11); save it as UTF-8"


def test_env_values_arrive_json_decoded():
    # DOLIBARR_WEBHOOKS_EMAIL_PASSWORD=123456 arrives as an int, TO as a JSON list, EVENTS as a string.
    s = settings(username="mailer@acme.example", password=123456, to=["a@example.com", "B <b@example.com>"],
                 events="BILL_PAYED, company_create", timeout=2.5, **{"from": None})
    assert s.password == "123456" and s.timeout == 2.5
    assert settings(username="u", password=" spaced pass ").password == " spaced pass "
    assert s.rules[0].sender == "mailer@acme.example"  # the account's address when FROM is unset
    assert s.rules[0].to == ("a@example.com", "B <b@example.com>")
    assert s.rules[0].events == ("BILL_PAYED", "COMPANY_CREATE")


def test_toml_rules_and_the_events_they_need():
    config = {
        "host": "smtp.example", "from": "erp@acme.example", "reply_to": "sales@acme.example", "language": "fr",
        "rules": [
            {"events": ["COMPANY_CREATE"], "to_field": "email", "template": "welcome", "language": "en"},
            {"events": ["BILL_PAYED", "INVOICE_VALIDATE"], "to": ["accounting@acme.example"],
             "from": "Billing <billing@acme.example>", "subject": "Paid: {{ ref }}"},
        ],
    }
    welcome, paid = parse_settings(config).rules
    assert (welcome.name, welcome.to, welcome.to_field, welcome.language) == ("rules[0]", (), "email", "en")
    assert welcome.reply_to == "sales@acme.example" and welcome.sender == "erp@acme.example"
    assert (paid.index, paid.language, paid.sender) == (1, "fr", "Billing <billing@acme.example>")
    settings = plugin.read_settings(config=config)
    assert plugin.handled_events(settings=settings) == ["BILL_PAYED", "COMPANY_CREATE", "INVOICE_VALIDATE"]


def test_env_rule_and_toml_rules_together():
    config = {**BASE, "events": ["BILL_*"], "rules": [{"events": ["COMPANY_CREATE"], "to_field": "email"}]}
    env_rule, toml_rule = parse_settings(config).rules
    assert (env_rule.name, toml_rule.name) == ("env", "rules[0]")
    settings = plugin.read_settings(config=config)
    assert plugin.handled_events(settings=settings) == ["BILL_*", "COMPANY_CREATE"]


def test_display_names_are_quoted_for_the_header():
    s = settings(to='"Doe, John" <john@acme.example>; b@acme.example, Zoé Martin <zoe@acme.example>')
    assert s.rules[0].to == ('"Doe, John" <john@acme.example>', "b@acme.example", "Zoé Martin <zoe@acme.example>")
