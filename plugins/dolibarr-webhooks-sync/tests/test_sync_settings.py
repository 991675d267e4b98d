"""Settings: disabled when not configured, ConfigError naming the setting when wrong."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks import Webhook

import dolibarr_webhooks_sync as sync
from dolibarr_webhooks.pluginkit import sign
from dolibarr_webhooks import ConfigError, PluginDisabled

URL = "https://crm.example/hooks/dolibarr"
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_not_configured_is_disabled():
    with pytest.raises(PluginDisabled, match="DOLIBARR_WEBHOOKS_SYNC_URL"):
        sync.handled_events(settings=sync.read_settings(config={}))
    # Enrichment settings alone configure no endpoint.
    with pytest.raises(PluginDisabled):
        sync.read_settings(config={"dolibarr_api_url": "https://erp.example/api/index.php", "dolibarr_api_key": "k"})


@pytest.mark.parametrize(("config", "setting", "message"), [
    ({"secret": SECRET}, "DOLIBARR_WEBHOOKS_SYNC_URL", "required"),
    ({"url": "ftp://crm.example/x", "secret": SECRET}, "DOLIBARR_WEBHOOKS_SYNC_URL", "http"),
    ({"url": "crm.example/hooks", "secret": SECRET}, "DOLIBARR_WEBHOOKS_SYNC_URL", "http"),
    ({"url": URL}, "DOLIBARR_WEBHOOKS_SYNC_SECRET", "required"),
    ({"url": URL, "secret": "  "}, "DOLIBARR_WEBHOOKS_SYNC_SECRET", "blank"),
    ({"url": URL, "secret": "whsec_not*base64!"}, "DOLIBARR_WEBHOOKS_SYNC_SECRET", "base64"),
    ({"url": URL, "secret": "whsec_QUJDR"}, "DOLIBARR_WEBHOOKS_SYNC_SECRET", "base64"),
    ({"url": URL, "secret": True}, "DOLIBARR_WEBHOOKS_SYNC_SECRET", "string"),
    ({"url": URL, "secret": SECRET, "timeout": 0}, "DOLIBARR_WEBHOOKS_SYNC_TIMEOUT", "greater than 0"),
    ({"url": URL, "secret": SECRET, "timeout": "soon"}, "DOLIBARR_WEBHOOKS_SYNC_TIMEOUT", "number"),
    ({"url": URL, "secret": SECRET, "headers": "X-Token: 1"}, "DOLIBARR_WEBHOOKS_SYNC_HEADERS", "JSON object"),
    ({"url": URL, "secret": SECRET, "headers": {"webhook-signature": "v1,x"}},
     "DOLIBARR_WEBHOOKS_SYNC_HEADERS", "cannot be overridden"),
    ({"url": URL, "secret": SECRET, "headers": {"Bad Name": "x"}}, "DOLIBARR_WEBHOOKS_SYNC_HEADERS", "header name"),
    ({"url": URL, "secret": SECRET, "headers": {"X-N": 3}}, "DOLIBARR_WEBHOOKS_SYNC_HEADERS", "string"),
    ({"url": URL, "secret": SECRET, "events": []}, "DOLIBARR_WEBHOOKS_SYNC_EVENTS", "empty"),
    ({"url": URL, "secret": SECRET, "events": {"BILL_PAYED": 1}}, "DOLIBARR_WEBHOOKS_SYNC_EVENTS", "list"),
    ({"url": URL, "secret": SECRET, "enrich": True}, "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_URL", "enrich"),
    ({"url": URL, "secret": SECRET, "enrich": "maybe"}, "DOLIBARR_WEBHOOKS_SYNC_ENRICH", "true or false"),
    ({"url": URL, "secret": SECRET, "dolibarr_api_url": "https://erp.example/api/index.php"},
     "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_KEY", "required"),
    ({"url": URL, "secret": SECRET, "dolibarr_api_url": "erp.example", "dolibarr_api_key": "k"},
     "DOLIBARR_WEBHOOKS_SYNC_DOLIBARR_API_URL", "http"),
    ({"url": URL, "secret": SECRET, "enrich_delay": -1}, "DOLIBARR_WEBHOOKS_SYNC_ENRICH_DELAY", "at least 0"),
    ({"url": URL, "secret": SECRET, "enrich_attempts": 0}, "DOLIBARR_WEBHOOKS_SYNC_ENRICH_ATTEMPTS", "at least 1"),
    ({"endpoints": {"url": URL}}, "plugins.sync.endpoints", "list of tables"),
    ({"endpoints": [{"url": URL, "secret": SECRET}]}, "plugins.sync.endpoints[0].name", "required"),
    ({"endpoints": [{"name": "crm", "url": URL, "secret": SECRET}, {"name": "bi", "url": "nope", "secret": SECRET}]},
     "plugins.sync.endpoints[1].url", "http"),
    ({"endpoints": [{"name": "crm", "url": URL}]}, "plugins.sync.endpoints[0].secret", "required"),
    ({"endpoints": [{"name": "crm", "url": URL, "secret": SECRET}, {"name": "crm", "url": URL, "secret": SECRET}]},
     "plugins.sync.endpoints", "twice"),
    ({"url": URL, "secret": SECRET, "endpoints": [{"name": "default", "url": URL, "secret": SECRET}]},
     "plugins.sync.endpoints", "twice"),
])
def test_bad_settings_name_the_setting(config, setting, message):
    with pytest.raises(ConfigError, match=message) as info:
        sync.handled_events(settings=sync.read_settings(config=config))
    assert info.value.setting == setting


def test_env_style_values_are_understood():
    # As the core hands them over from .env: JSON-decoded when they parse, else strings.
    settings = sync.parse_settings({
        "url": URL, "secret": 12345678, "events": "BILL_PAYED, BILL_VALIDATE", "timeout": 3,
        "headers": {"X-Tenant": "acme"}, "dolibarr_api_url": "https://erp.example/api/index.php/",
        "dolibarr_api_key": 4242, "enrich_delay": 0, "enrich_attempts": 5,
    })
    (endpoint,) = settings.endpoints
    assert endpoint.name == "default"
    assert endpoint.key == b"12345678"
    assert endpoint.events == ("BILL_PAYED", "BILL_VALIDATE")
    assert endpoint.headers == (("X-Tenant", "acme"),)
    assert endpoint.timeout == 3
    assert endpoint.enrich is True  # the API is configured: enrichment is on unless enrich = false
    assert settings.api_url == "https://erp.example/api/index.php"
    assert settings.api_key == "4242"
    assert (settings.enrich_delay, settings.enrich_attempts) == (0, 5)
    assert "secret" not in repr(settings) and "4242" not in repr(settings)


def test_handled_events_is_the_union_of_the_endpoints_rules():
    endpoints = [
        {"name": "accounting", "url": URL, "secret": SECRET, "events": ["BILL_PAYED", "INVOICE_VALIDATE"]},
        {"name": "crm", "url": URL, "secret": SECRET, "events": ["COMPANY_*", "BILL_PAYED"], "enrich": False},
    ]
    settings = sync.read_settings(config={"endpoints": endpoints})
    assert sync.handled_events(settings=settings) == ["BILL_PAYED", "COMPANY_*", "INVOICE_VALIDATE"]
    # One endpoint without rules takes every event.
    settings = sync.read_settings(config={"endpoints": [*endpoints, {"name": "all", "url": URL, "secret": SECRET}]})
    assert sync.handled_events(settings=settings) is None
    assert sync.handled_events(settings=sync.read_settings(config={"url": URL, "secret": SECRET})) is None


def test_timeout_setting_is_the_default_of_every_endpoint():
    settings = sync.parse_settings({"timeout": 4, "endpoints": [
        {"name": "a", "url": URL, "secret": SECRET},
        {"name": "b", "url": URL, "secret": SECRET, "timeout": 1.5},
    ]})
    assert [e.timeout for e in settings.endpoints] == [4, 1.5]
    assert settings.timeout == 4


@pytest.mark.parametrize("secret", [
    SECRET,
    SECRET.rstrip("="),  # unpadded base64, which the library accepts too
    "whsec_" + base64.b64encode(b"\x00\xffkey bytes that are not text").decode(),
])
def test_whsec_secret_gives_the_key_of_standardwebhooks(secret):
    key = sync.secret_key(secret, "S")
    # The library's own key derivation, through its public API: it signs with that key.
    ours = sign(key, "msg_1", 1700000000, b"{}")
    from datetime import datetime, timezone

    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1700000000, timezone.utc), "{}")
    assert ours == theirs


def test_raw_secret_is_its_utf8_bytes():
    from datetime import datetime, timezone

    key = sync.secret_key("  pâte à crêpes  ", "S")
    assert key == "pâte à crêpes".encode()
    theirs = Webhook("pâte à crêpes".encode()).sign("msg_1", datetime.fromtimestamp(1700000000, timezone.utc), "{}")
    assert sign(key, "msg_1", 1700000000, b"{}") == theirs
