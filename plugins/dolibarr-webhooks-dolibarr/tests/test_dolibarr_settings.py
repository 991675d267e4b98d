"""read_settings: what the plugin accepts, read the way the core hands settings to it."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

import dolibarr_webhooks_dolibarr as plugin
from dolibarr_webhooks import ConfigError, PluginDisabled
from dolibarr_webhooks.settings import load_settings, plugin_config
from dolibarr_webhooks_dolibarr import actions, settings as settings_module

PACKAGE = Path(plugin.__file__).parent


def read(tmp_path, environ=None, toml=None):
    """The plugin's settings as the core would build them from these variables and TOML file."""
    environ = dict(environ or {})
    if toml is not None:
        path = tmp_path / "dolibarr-webhooks.toml"
        path.write_text(textwrap.dedent(toml), encoding="utf-8")
        environ["DOLIBARR_WEBHOOKS_CONFIG"] = str(path)
    core = load_settings(environ=environ, env_file=tmp_path / "no.env")
    return plugin.read_settings(config=plugin_config(core, "dolibarr"))


def test_disabled_until_an_api_key_is_set(tmp_path):
    with pytest.raises(PluginDisabled, match="set DOLIBARR_WEBHOOKS_DOLIBARR_API_KEY"):
        read(tmp_path, {"DOLIBARR_WEBHOOKS_DOLIBARR_URL": "https://erp.example"})


def test_the_core_s_dolibarr_url_is_not_a_plugin_setting(tmp_path):
    """DOLIBARR_WEBHOOKS_DOLIBARR_URL is the core's (links to cards); the plugin gets it per event."""
    settings = read(tmp_path, {"DOLIBARR_WEBHOOKS_DOLIBARR_URL": "https://erp.example",
                               "DOLIBARR_WEBHOOKS_DOLIBARR_API_KEY": "0123456789"})
    source = settings.source("default")
    assert source.api_key == "0123456789"  # an all-digit key arrives as a number, and is kept as text
    assert source.url_for("https://erp.example/") == "https://erp.example/api/index.php"
    assert settings.plugins is None and settings.outcomes == ("delivered", "dead") and settings.actions == {}
    assert "0123456789" not in repr(settings)


def test_every_setting_from_the_environment(tmp_path):
    settings = read(tmp_path, {
        "DOLIBARR_WEBHOOKS_DOLIBARR_API_KEY": "k" * 40,
        "DOLIBARR_WEBHOOKS_DOLIBARR_API_URL": "https://erp.internal/dolibarr/api/index.php/",
        "DOLIBARR_WEBHOOKS_DOLIBARR_PLUGINS": "email,slack",
        "DOLIBARR_WEBHOOKS_DOLIBARR_OUTCOMES": "dead",
        "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS":
            '{"proposal_close_signed": ["create_order"], "BILL_VALIDATE": "build_pdf"}',
        "DOLIBARR_WEBHOOKS_DOLIBARR_TIMEOUT": "4",
        "DOLIBARR_WEBHOOKS_DOLIBARR_SETTLE_DELAY": "0",
    })
    assert settings.source("any").url_for("https://ignored.example") == "https://erp.internal/dolibarr/api/index.php"
    assert settings.plugins == ("email", "slack") and settings.outcomes == ("dead",)
    # The invented name is understood as Dolibarr's code, as the core does for handled_events.
    assert settings.actions == {"PROPAL_CLOSE_SIGNED": ("create_order",), "BILL_VALIDATE": ("build_pdf",)}
    assert (settings.timeout, settings.settle_delay) == (4, 0)
    assert settings.writes_back("email", "dead") and not settings.writes_back("email", "delivered")
    assert not settings.writes_back("sync", "dead")


def test_one_dolibarr_per_source_from_the_toml_file(tmp_path):
    settings = read(tmp_path, toml="""
        [plugins.dolibarr]
        plugins = ["sync"]

        [plugins.dolibarr.actions]
        PROPAL_CLOSE_SIGNED = ["create_order"]
        ORDER_VALIDATE = ["build_pdf"]

        [plugins.dolibarr.sources.shop]
        api_key = "shop-key"

        [plugins.dolibarr.sources.eu]
        api_key = "eu-key"
        api_url = "https://eu.erp.example/api/index.php"
        """)
    assert settings.source("shop").api_key == "shop-key" and settings.source("shop").api_url is None
    assert settings.source("eu").url_for(None) == "https://eu.erp.example/api/index.php"
    assert settings.source("default") is None  # no default key: that source is not written back
    assert plugin.handled_events(settings=settings) == ["ORDER_VALIDATE", "PROPAL_CLOSE_SIGNED"]


@pytest.mark.parametrize("config, setting, text", [
    ({"api_url": "https://erp.example/api/index.php"}, "DOLIBARR_WEBHOOKS_DOLIBARR_API_KEY", "is required with"),
    ({"api_key": "k", "api_url": "erp.example"}, "DOLIBARR_WEBHOOKS_DOLIBARR_API_URL", "must be the http.s. URL"),
    ({"api_key": "k", "api_url": "https://u:p@erp.example/api/index.php"}, "DOLIBARR_WEBHOOKS_DOLIBARR_API_URL",
     "must not carry credentials"),
    ({"api_key": "k", "outcomes": "sent"}, "DOLIBARR_WEBHOOKS_DOLIBARR_OUTCOMES",
     "'sent' is not one of delivered, dead"),
    ({"api_key": "k", "plugins": ["e mail"]}, "DOLIBARR_WEBHOOKS_DOLIBARR_PLUGINS", "is not a plugin name"),
    ({"api_key": "k", "actions": ["create_order"]}, "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS", "must map trigger codes"),
    ({"api_key": "k", "actions": {"PROPAL_CLOSE_SIGNED": ["make_coffee"]}}, "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS",
     "'make_coffee' is not one of create_order, build_pdf"),
    ({"api_key": "k", "actions": {"ORDER_VALIDATE": ["create_order"]}}, "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS",
     "create_order follows PROPAL_CLOSE_SIGNED, not ORDER_VALIDATE"),
    ({"api_key": "k", "actions": {"PROPAL_VALIDATE": ["create_order"]}}, "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS",
     "create_order follows PROPAL_CLOSE_SIGNED, not PROPAL_VALIDATE"),
    ({"api_key": "k", "actions": {"COMPANY_CREATE": ["build_pdf"]}}, "DOLIBARR_WEBHOOKS_DOLIBARR_ACTIONS",
     "build_pdf follows PROPAL_\\* or ORDER_\\* or BILL_\\*, not COMPANY_CREATE"),
    ({"api_key": "k", "timeout": "soon"}, "DOLIBARR_WEBHOOKS_DOLIBARR_TIMEOUT", "must be a number of seconds"),
    ({"api_key": "k", "timeout": 0}, "DOLIBARR_WEBHOOKS_DOLIBARR_TIMEOUT", "more than 0"),
    ({"api_key": "k", "settle_delay": -1}, "DOLIBARR_WEBHOOKS_DOLIBARR_SETTLE_DELAY", "at least 0"),
    ({"sources": {"shop": {"api_url": "https://erp.example/api/index.php"}}},
     "[plugins.dolibarr.sources.shop] api_key", "is required"),
    ({"sources": {"shop": {"api_key": "k", "secret": "x"}}}, "[plugins.dolibarr.sources.shop]", "unknown keys: secret"),
    ({"api_key": "k", "apikey": "k"}, "DOLIBARR_WEBHOOKS_DOLIBARR_APIKEY", "is not a setting of the plugin"),
])
def test_bad_settings_stop_start_up_naming_them(config, setting, text):
    with pytest.raises(ConfigError, match=text) as caught:
        plugin.read_settings(config=config)
    assert caught.value.setting == setting


def test_every_action_has_its_code():
    assert set(settings_module.ACTIONS) == set(actions.ACTIONS)


def test_imports_only_what_plugins_may_import_from_the_core():
    """``dolibarr_webhooks`` and ``dolibarr_webhooks.pluginkit``: the rest of the core may move."""
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                if name and name.split(".")[0] == "dolibarr_webhooks":
                    assert name in ("dolibarr_webhooks", "dolibarr_webhooks.pluginkit"), f"{path.name} imports {name}"
