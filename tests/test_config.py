"""Settings come from defaults, .env, the environment, TOML, then test_config; bad ones stop start-up."""

from __future__ import annotations

import re

import pytest

from dolibarr_webhooks import create_app
from dolibarr_webhooks.settings import (ConfigError, load_settings, parse_duration, parse_host, parse_size,
                                        plugin_config)

SECRET = "s" * 20


def test_order_of_sources(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("DOLIBARR_WEBHOOKS_DEDUP_WINDOW=1m\nDOLIBARR_WEBHOOKS_PORT=1000\n"
                        "DOLIBARR_WEBHOOKS_RETENTION=2d\nDOLIBARR_WEBHOOKS_SECRET=" + SECRET + "\n")
    toml = tmp_path / "config.toml"
    toml.write_text('retention = "3d"\nmax_body_size = "1MiB"\n')
    settings = load_settings({"MAX_BODY_SIZE": 5}, env_file=env_file, environ={
        "DOLIBARR_WEBHOOKS_PORT": "2000", "DOLIBARR_WEBHOOKS_CONFIG": str(toml)})
    assert settings["DEDUP_WINDOW"] == 60  # .env
    assert settings["PORT"] == 2000  # environment over .env
    assert settings["RETENTION"] == 3 * 86400  # TOML over both
    assert settings["MAX_BODY_SIZE"] == 5  # test_config last
    assert settings.sources["default"].secrets == (SECRET,)


def test_node_guide_variables_keep_working():
    settings = load_settings(environ={"WEBHOOK_SECRET": SECRET, "WEBHOOK_PORT": "3000", "LOG_LEVEL": "debug"},
                             env_file="")
    assert settings.sources["default"].secrets == (SECRET,)
    assert settings["PORT"] == 3000 and settings["LOG_LEVEL"] == "DEBUG"
    # The prefixed variable wins when both are set.
    settings = load_settings(environ={"WEBHOOK_SECRET": SECRET, "DOLIBARR_WEBHOOKS_SECRET": "p" * 20}, env_file="")
    assert settings.sources["default"].secrets == ("p" * 20,)


def test_rotation_and_sources(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[sources.shop2]\nsecret = "' + "b" * 20 + '"\nallowed_ips = ["10.0.0.0/8"]\n'
                    'dolibarr_url = "https://erp2.example/"\n')
    settings = load_settings({"SECRET": SECRET, "SECRETS": "old" + "x" * 20, "CONFIG": str(toml)}, environ={},
                             env_file="")
    assert settings.sources["default"].secrets == (SECRET, "old" + "x" * 20)
    shop2 = settings.sources["shop2"]
    assert shop2.dolibarr_url == "https://erp2.example" and str(shop2.allowed_ips[0]) == "10.0.0.0/8"


@pytest.mark.parametrize("key,value,named", [
    ("DEDUP_WINDOW", "soon", "DOLIBARR_WEBHOOKS_DEDUP_WINDOW"),
    ("ALLOWED_IPS", "10.0.0.0/33", "DOLIBARR_WEBHOOKS_ALLOWED_IPS"),
    ("DATABASE_URL", "mysql://x", "DOLIBARR_WEBHOOKS_DATABASE_URL"),
    ("SECRET", "short", "DOLIBARR_WEBHOOKS_SECRET"),
    ("SECRET", "a/b" + "c" * 20, "DOLIBARR_WEBHOOKS_SECRET"),
    ("STRICT", "perhaps", "DOLIBARR_WEBHOOKS_STRICT"),
    ("PORT", "eighty", "DOLIBARR_WEBHOOKS_PORT"),
    ("LOG_FORMAT", "xml", "DOLIBARR_WEBHOOKS_LOG_FORMAT"),
    ("RETRY_SCHEDULE", "", "DOLIBARR_WEBHOOKS_RETRY_SCHEDULE"),
    ("HOST", "127.0.0.1:8080", "DOLIBARR_WEBHOOKS_HOST"),
    ("HOST", "[1, 2]", "DOLIBARR_WEBHOOKS_HOST"),
])
def test_bad_setting_stops_start_up_naming_it(key, value, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        create_app({key: value})
    assert named in str(info.value)


def test_listen_addresses_as_people_write_them():
    """An IPv6 address in the brackets of a URL, spaces around: what serve binds and check
    prints; '[::1]' and '127.0.0.1:8080' were tracebacks from both."""
    assert [parse_host(v) for v in ("[::1]", "::1", " 127.0.0.1 ", "localhost", "hooks.example.com", "")] == [
        "::1", "::1", "127.0.0.1", "localhost", "hooks.example.com", ""]
    for value in ("127.0.0.1:8080", "my host", "256.1.1.1", "http://x"):
        with pytest.raises(ValueError, match="not an IP address or a host name"):
            parse_host(value)


def test_bad_toml_sources(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[sources.shop2]\nallowed_ips = ["10.0.0.0/8"]\n')
    with pytest.raises(ConfigError, match=r"\[sources.shop2\]: needs a secret"):
        load_settings({"CONFIG": str(toml)}, environ={}, env_file="")
    toml.write_text('[sources.shop2]\nsecret = "' + SECRET + '"\n')
    with pytest.raises(ConfigError, match="same secret"):
        load_settings({"CONFIG": str(toml), "SECRET": SECRET}, environ={}, env_file="")
    toml.write_text("this is = not toml")
    with pytest.raises(ConfigError, match="DOLIBARR_WEBHOOKS_CONFIG"):
        load_settings({"CONFIG": str(toml)}, environ={}, env_file="")


def test_settings_files_saved_by_other_editors(tmp_path):
    """A byte order mark (Windows editors write one) is skipped: it made the first line's name
    "\\ufeffDOLIBARR_WEBHOOKS_...", a setting silently ignored. A file in another encoding
    (Latin-1, UTF-16) is one clear error naming it, where every command printed a traceback."""
    env_file, toml = tmp_path / ".env", tmp_path / "c.toml"
    env_file.write_bytes(b"\xef\xbb\xbfDOLIBARR_WEBHOOKS_PORT=1234\n")
    toml.write_bytes(b'\xef\xbb\xbfretention = "3d"\n')
    settings = load_settings({"CONFIG": str(toml)}, environ={}, env_file=env_file)
    assert settings["PORT"] == 1234 and settings["RETENTION"] == 3 * 86400
    env_file.write_bytes(b"DOLIBARR_WEBHOOKS_SECRET=caf\xe9" * 4 + b"\n")
    with pytest.raises(ConfigError, match=r"DOLIBARR_WEBHOOKS_ENV_FILE: cannot read .*\.env: not UTF-8 text "
                                          r"\(byte 0xe9 at offset 28\); save it as UTF-8"):
        load_settings(environ={}, env_file=env_file)
    toml.write_text('name = "café"\n', encoding="utf-16")
    with pytest.raises(ConfigError, match=r"DOLIBARR_WEBHOOKS_CONFIG: .* not UTF-8 text \(byte 0xff at offset 0\)"):
        load_settings({"CONFIG": str(toml)}, environ={}, env_file="")
    with pytest.raises(ConfigError, match="DOLIBARR_WEBHOOKS_ENV_FILE: cannot read x+: .*File name too long"):
        load_settings(environ={}, env_file="x" * 300)


def test_an_env_file_named_in_the_environment_must_be_there(tmp_path):
    """DOLIBARR_WEBHOOKS_ENV_FILE (what --env-file sets) naming no file is an error; ./.env,
    read when none is named, may be missing, and so may a file a caller passes itself (serve
    makes it)."""
    missing = tmp_path / "typo.env"
    with pytest.raises(ConfigError, match=f"^DOLIBARR_WEBHOOKS_ENV_FILE: no file {re.escape(str(missing))}$"):
        load_settings(environ={"DOLIBARR_WEBHOOKS_ENV_FILE": str(missing)})
    assert load_settings(environ={"DOLIBARR_WEBHOOKS_ENV_FILE": ""})["PORT"] == 8080
    assert load_settings(environ={}, env_file=missing)["PORT"] == 8080
    missing.write_text("DOLIBARR_WEBHOOKS_PORT=1234\n")
    assert load_settings(environ={"DOLIBARR_WEBHOOKS_ENV_FILE": str(missing)})["PORT"] == 1234


@pytest.mark.parametrize("variable", ["DOLIBARR_WEBHOOKS_SECRET", "WEBHOOK_SECRET", "DOLIBARR_WEBHOOKS_SYNC_SECRET",
                                      "DOLIBARR_WEBHOOKS_DATABASE_URL"])
def test_environment_values_that_are_not_utf8_are_refused_naming_them(variable):
    """os.environ holds the bytes of a value that is not UTF-8 as lone surrogates. A secret set
    so passed check and answered 500 to every request; a plugin's made "its settings could not
    be read: UnicodeEncodeError"; a database path made check a traceback."""
    value = {"DOLIBARR_WEBHOOKS_DATABASE_URL": "sqlite:////tmp/caf\udce9.db"}.get(variable, SECRET + "\udcff")
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: value}, env_file="")
    assert info.value.setting == variable
    offset, byte = next((at, ord(char) - 0xdc00) for at, char in enumerate(value) if char >= "\udc80")
    assert info.value.message == f"not UTF-8 text (byte 0x{byte:02x} at offset {offset}); set it as UTF-8 text"
    # UTF-8 beyond ASCII is text like any other.
    settings = load_settings(environ={"DOLIBARR_WEBHOOKS_SECRET": SECRET + "é", "DOLIBARR_WEBHOOKS_SYNC_SECRET": "ü"},
                             env_file="")
    assert settings.sources["default"].secrets == (SECRET + "é",)
    assert plugin_config(settings, "sync")["secret"] == "ü"
    # A surrogate no byte gives (a program's own environment): said as such.
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"DOLIBARR_WEBHOOKS_SOURCE": "x\ud800"}, env_file="")
    assert info.value.message == "not UTF-8 text (a lone surrogate at offset 1); set it as UTF-8 text"


def test_plugin_settings_are_namespaced(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[plugins.slack]\nrules = [{events = ["BILL_*"], webhook_url = "https://hooks.example/x"}]\n')
    settings = load_settings({"CONFIG": str(toml)}, env_file="", environ={
        "DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL": "https://hooks.example/y",
        "DOLIBARR_WEBHOOKS_SLACK_TIMEOUT": "5",
        "DOLIBARR_WEBHOOKS_SLACK_HEADERS__X_TEAM": "sales",
        "DOLIBARR_WEBHOOKS_EMAIL_HOST": "smtp.example"})
    slack = plugin_config(settings, "slack")
    assert slack == {"webhook_url": "https://hooks.example/y", "timeout": 5, "headers": {"x_team": "sales"},
                     "rules": [{"events": ["BILL_*"], "webhook_url": "https://hooks.example/x"}]}
    assert plugin_config(settings, "email") == {"host": "smtp.example"}


def test_units():
    assert parse_duration("500ms") == 0.5 and parse_duration("2h") == 7200 and parse_duration(3) == 3
    assert parse_size("16MiB") == 16 * 1024**2 and parse_size("512k") == 512 * 1024
