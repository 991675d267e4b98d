"""The README's configurations are real: they load through the core's settings as documented."""

from __future__ import annotations

from pathlib import Path

import dolibarr_webhooks_dolibarr as plugin
from dolibarr_webhooks.settings import load_settings, plugin_config
from dolibarr_webhooks.testing import rst_code_blocks
from dolibarr_webhooks_dolibarr import settings as settings_module

README = Path(__file__).parents[1] / "README.rst"


def code_blocks(language: str) -> list[str]:
    """The README's ``.. code-block:: <language>`` blocks, dedented, in order."""
    return rst_code_blocks(README.read_text(encoding="utf-8"), language)


def test_the_env_example(tmp_path):
    (env,) = [block for block in code_blocks("sh") if "DOLIBARR_API_KEY=" in block]
    (tmp_path / ".env").write_text(env, encoding="utf-8")
    core = load_settings(environ={}, env_file=tmp_path / ".env")
    settings = plugin.read_settings(config=plugin_config(core, "dolibarr"))
    assert core.sources["default"].dolibarr_url == "https://erp.example"
    api_url = settings.source("default").url_for(core.sources["default"].dolibarr_url)
    assert api_url == "https://erp.example/api/index.php"
    assert settings.plugins == ("email", "slack") and settings.actions == {"PROPAL_CLOSE_SIGNED": ("create_order",)}


def test_the_toml_example(tmp_path):
    (toml,) = code_blocks("toml")
    path = tmp_path / "dolibarr-webhooks.toml"
    path.write_text(toml, encoding="utf-8")
    core = load_settings(environ={"DOLIBARR_WEBHOOKS_CONFIG": str(path)}, env_file=tmp_path / ".env")
    settings = plugin.read_settings(config=plugin_config(core, "dolibarr"))
    shop = settings.source("shop")
    assert shop.url_for(core.sources["shop"].dolibarr_url) == "https://shop-erp.example/api/index.php"
    assert settings.outcomes == ("dead",) and set(settings.actions) == {"PROPAL_CLOSE_SIGNED", "ORDER_VALIDATE"}
    assert settings.source("default") is None


def test_every_setting_is_in_the_table():
    text = README.read_text(encoding="utf-8")
    for key in settings_module.KEYS[:-1]:  # sources: a TOML table, shown in the example
        assert f"``DOLIBARR_WEBHOOKS_DOLIBARR_{key.upper()}``" in text, key
