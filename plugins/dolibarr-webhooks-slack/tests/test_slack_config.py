"""Settings: what is disabled, what is refused at start-up and named, what each rule handles."""

from __future__ import annotations


import pytest

import dolibarr_webhooks_slack as slack_plugin
from dolibarr_webhooks import ConfigError, PluginDisabled

URL = "https://hooks.slack.com/services/T000TEAM/B000SALES/XXXXSECRETXXXX"


@pytest.mark.parametrize("config", [{}, {"webhook_url": ""}, {"language": "fr", "timeout": 5}, {"rules": []}])
def test_slack_not_configured_is_disabled(config):
    with pytest.raises(PluginDisabled, match="DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL"):
        slack_plugin.handled_events(settings=slack_plugin.read_settings(config=config))


def test_slack_one_url_without_events_handles_everything():
    assert slack_plugin.handled_events(settings=slack_plugin.read_settings(config={"webhook_url": URL})) is None


@pytest.mark.parametrize("events", [["PROPAL_CLOSE_SIGNED", "bill_*"], "PROPAL_CLOSE_SIGNED, BILL_*",
                                    "PROPAL_CLOSE_SIGNED BILL_*"])
def test_slack_events_from_env_list_or_string(events):
    # A JSON list (decoded by the core) or a plain string, as an operator writes it in .env.
    config = {"webhook_url": URL, "events": events}
    settings = slack_plugin.read_settings(config=config)
    assert slack_plugin.handled_events(settings=settings) == ["BILL_*", "PROPAL_CLOSE_SIGNED"]


def test_slack_rules_union_of_events():
    config = {"rules": [{"events": ["PROPAL_CLOSE_SIGNED"], "webhook_url": URL},
                        {"events": ["BILL_PAYED", "PAYMENT_CUSTOMER_CREATE"], "webhook_url": URL + "2",
                         "language": "fr"}]}
    settings = slack_plugin.read_settings(config=config)
    assert slack_plugin.handled_events(settings=settings) == ["BILL_PAYED", "PAYMENT_CUSTOMER_CREATE",
                                                              "PROPAL_CLOSE_SIGNED"]
    rules = settings.rules
    assert [(r.name, r.language, r.timeout) for r in rules] == [("rule 0", "en", 10.0), ("rule 1", "fr", 10.0)]


def test_slack_rule_without_events_makes_everything_handled():
    config = {"webhook_url": URL, "events": ["BILL_PAYED"], "rules": [{"webhook_url": URL + "2"}]}
    assert slack_plugin.handled_events(settings=slack_plugin.read_settings(config=config)) is None


def test_slack_rules_inherit_language_and_timeout():
    config = {"language": "fr", "timeout": "4.5",
              "rules": [{"webhook_url": URL}, {"webhook_url": URL, "language": "en", "timeout": 2}]}
    rules = slack_plugin.read_settings(config=config).rules
    assert [(r.language, r.timeout) for r in rules] == [("fr", 4.5), ("en", 2.0)]


@pytest.mark.parametrize(("config", "setting"), [
    ({"webhook_url": "hooks.slack.com/services/T000TEAM/B000SALES/XXXXSECRETXXXX"},
     "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL"),
    ({"webhook_url": "ftp://hooks.slack.com/services/XXXXSECRETXXXX"}, "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL"),
    ({"webhook_url": "https:///services/XXXXSECRETXXXX"}, "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL"),
    ({"webhook_url": 12}, "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL"),
    ({"events": ["BILL_PAYED"]}, "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL"),
    ({"webhook_url": URL, "events": []}, "DOLIBARR_WEBHOOKS_SLACK_EVENTS"),
    ({"webhook_url": URL, "events": ["BILL_PAYED", 3]}, "DOLIBARR_WEBHOOKS_SLACK_EVENTS"),
    ({"webhook_url": URL, "events": {"BILL_PAYED": 1}}, "DOLIBARR_WEBHOOKS_SLACK_EVENTS"),
    ({"webhook_url": URL, "language": "de"}, "DOLIBARR_WEBHOOKS_SLACK_LANGUAGE"),
    ({"webhook_url": URL, "timeout": "soon"}, "DOLIBARR_WEBHOOKS_SLACK_TIMEOUT"),
    ({"webhook_url": URL, "timeout": 0}, "DOLIBARR_WEBHOOKS_SLACK_TIMEOUT"),
    ({"webhook_url": URL, "timeout": True}, "DOLIBARR_WEBHOOKS_SLACK_TIMEOUT"),
    ({"webhook": URL}, "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK"),
    ({"rules": {"events": ["BILL_PAYED"], "webhook_url": URL}}, "[plugins.slack] rules"),
    ({"rules": ["BILL_PAYED"]}, "[plugins.slack] rules[0]"),
    ({"rules": [{"webhook_url": URL}, {"events": ["BILL_PAYED"]}]}, "[plugins.slack] rules[1].webhook_url"),
    ({"rules": [{"webhook_url": "http//hooks.slack.com/XXXXSECRETXXXX"}]}, "[plugins.slack] rules[0].webhook_url"),
    ({"rules": [{"webhook_url": URL, "event": ["BILL_PAYED"]}]}, "[plugins.slack] rules[0].event"),
    ({"rules": [{"webhook_url": URL, "events": []}]}, "[plugins.slack] rules[0].events"),
    ({"rules": [{"webhook_url": URL, "language": "es"}]}, "[plugins.slack] rules[0].language"),
    ({"rules": [{"webhook_url": URL, "timeout": -1}]}, "[plugins.slack] rules[0].timeout"),
])
def test_slack_bad_setting_is_named(config, setting):
    with pytest.raises(ConfigError) as caught:
        slack_plugin.handled_events(settings=slack_plugin.read_settings(config=config))
    assert caught.value.setting == setting
    # The webhook URL is a credential: errors name the setting, never echo the value.
    assert "XXXXSECRETXXXX" not in str(caught.value)


def test_slack_plain_http_is_allowed_with_a_warning():
    with pytest.warns(UserWarning) as caught:
        settings = slack_plugin.read_settings(config={"webhook_url": "http://127.0.0.1:9/services/T/B/X"})
        assert slack_plugin.handled_events(settings=settings) is None
    assert len(caught) == 1 and "plain http" in str(caught[0].message)
    assert "127.0.0.1" not in str(caught[0].message)
