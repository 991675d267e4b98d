"""The plugin system: entry points, choosing and blocking, isolation at dispatch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dolibarr_webhooks import PermanentFailure, create_app, hookimpl
from dolibarr_webhooks.settings import ConfigError, load_settings
from dolibarr_webhooks.plugins import PluginLoadError, build_plugins
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET
from dolibarr_webhooks.testing import overlay_venv, plugin_package


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A virtual environment that sees the installed core and gets two real plugin packages."""
    root = tmp_path_factory.mktemp("plugins")
    python = overlay_venv(root / "venv")
    good = plugin_package(root, "hello", version="1.2.3", source="""
        from dolibarr_webhooks import hookimpl

        @hookimpl
        def handled_events(settings):
            return settings.get("events", ["BILL_*", "COMPANY_CREATE"])

        @hookimpl
        def handle_event(event):
            print("hello", event.trigger_code)
    """)
    broken = plugin_package(root, "broken", "import a_module_that_does_not_exist\n")
    for package in (good, broken):
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", str(package)], check=True, timeout=300)
    return python


def test_an_overlay_venv_of_another_interpreter_sees_this_environments_packages(tmp_path):
    """bench/interpreters.py runs the same packages under another build of this Python."""
    import dolibarr_webhooks

    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter under this venv
    python = overlay_venv(tmp_path / "venv", interpreter=base)
    found = subprocess.run([str(python), "-c", "import sys, dolibarr_webhooks, flask; "
                            "print(sys.prefix); print(dolibarr_webhooks.__file__)"],
                           capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    prefix, core = found.stdout.splitlines()
    assert Path(prefix) == tmp_path / "venv"
    assert Path(core) == Path(dolibarr_webhooks.__file__)


def cli(python: Path, *args: str, env: dict[str, str] | None = None, cwd: Path) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "DOLIBARR_WEBHOOKS_SECRET": SECRET,
            "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{cwd / 'db.sqlite3'}"}
    return subprocess.run([str(python), "-c", "from dolibarr_webhooks.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=cwd, env={**base, **(env or {})}, timeout=120)


def test_plugin_found_through_its_real_entry_point(plugin_env, tmp_path):
    only = {"DOLIBARR_WEBHOOKS_PLUGINS": "hello,log"}  # other installed plugins do not matter here
    result = cli(plugin_env, "plugins", "--json", env=only, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["hello"]["version"] == "1.2.3"
    assert plugins["hello"]["events"] == ["BILL_*", "COMPANY_CREATE"]
    assert plugins["hello"]["hooks"] == ["handle_event", "handled_events"]
    events = {e["code"]: e for e in json.loads(cli(plugin_env, "events", "--json", cwd=tmp_path, env=only).stdout)}
    assert events["BILL_PAYED"]["plugins"] == ["hello", "log"]
    assert events["COMPANY_CREATE"]["plugins"] == ["hello", "log"]
    assert events["PROPAL_CLOSE_SIGNED"]["plugins"] == ["log"]


def test_a_plugin_that_fails_to_import_stops_start_up_naming_it(plugin_env, tmp_path):
    result = cli(plugin_env, "plugins", cwd=tmp_path, env={"DOLIBARR_WEBHOOKS_PLUGINS": "broken,hello"})
    assert result.returncode != 0
    assert "plugin broken" in result.stderr and "a_module_that_does_not_exist" in result.stderr


def test_operators_choose_and_block_plugins(plugin_env, tmp_path):
    chosen = cli(plugin_env, "plugins", "--json", env={"DOLIBARR_WEBHOOKS_PLUGINS": "hello,log"}, cwd=tmp_path)
    assert {p["name"] for p in json.loads(chosen.stdout)} == {"hello", "log", "catalogue"}
    blocked = cli(plugin_env, "plugins", "--json", cwd=tmp_path, env={
        "DOLIBARR_WEBHOOKS_PLUGINS": "broken,hello,log", "DOLIBARR_WEBHOOKS_BLOCK_PLUGINS": "broken,log"})
    assert {p["name"] for p in json.loads(blocked.stdout)} == {"hello", "catalogue"}
    missing = cli(plugin_env, "plugins", env={"DOLIBARR_WEBHOOKS_PLUGINS": "nope"}, cwd=tmp_path)
    assert missing.returncode != 0 and "no installed plugin named nope" in missing.stderr


def test_plugin_settings_reach_the_plugin(plugin_env, tmp_path):
    result = cli(plugin_env, "plugins", "--json", cwd=tmp_path, env={
        "DOLIBARR_WEBHOOKS_PLUGINS": "hello", "DOLIBARR_WEBHOOKS_HELLO_EVENTS": '["INVOICE_PAYED"]'})
    hello = next(p for p in json.loads(result.stdout) if p["name"] == "hello")
    assert hello["events"] == ["BILL_PAYED"]  # the alias is understood


class Recorder:
    def __init__(self, name, fail=None):
        self.name, self.fail, self.seen = name, fail, []

    @hookimpl
    def handle_event(self, event, settings):
        self.seen.append((event.trigger_code, settings))
        if self.fail:
            raise self.fail


def test_one_plugins_exception_never_touches_another(tmp_path, monkeypatch, deliver):
    monkeypatch.chdir(tmp_path)
    broken, healthy = Recorder("broken", PermanentFailure("nope")), Recorder("healthy")
    app = create_app({"SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path / 'd.sqlite3'}",
                      "EXTRA_PLUGINS": [("broken", broken), ("healthy", healthy)],
                      "PLUGIN_CONFIG": {"healthy": {"colour": "green"}}})
    response = app.test_client().post(f"/webhook/{SECRET}", data=sample_body("BILL_PAYED"))
    assert response.json["deliveries"] == 3
    stats = deliver(app)
    assert stats["plugins"]["broken"]["dead"] == 1
    assert stats["plugins"]["healthy"]["delivered"] == 1 and stats["plugins"]["log"]["delivered"] == 1
    assert healthy.seen == [("BILL_PAYED", {"colour": "green"})]
    app.extensions["dolibarr_webhooks"].store.dispose()


def test_unknown_hook_is_a_start_up_error():
    class Typo:
        @hookimpl
        def handle_events(self, event):  # not a hook
            pass

    with pytest.raises(PluginLoadError, match="handle_events"):
        build_plugins(load_settings({"SECRET": SECRET}, environ={}, env_file=""), extra=[("typo", Typo())])


def test_duplicate_event_registration_is_a_start_up_error():
    class Again:
        @hookimpl
        def register_events(self, register):
            register("BILL_PAYED", element="facture", label_en="Paid again")

    with pytest.raises(ConfigError, match="BILL_PAYED registered twice"):
        build_plugins(load_settings({"SECRET": SECRET}, environ={}, env_file=""), extra=[("again", Again())])


def test_plugin_registered_events_show_up():
    class MyModule:
        @hookimpl
        def register_events(self, register):
            register("MYMODULE_DONE", element="mything", label_en="My thing done", label_fr="Mon truc fait")

    plugins = build_plugins(load_settings({"SECRET": SECRET}, environ={}, env_file=""), extra=[("mine", MyModule())])
    assert plugins.catalogue.get("MYMODULE_DONE").plugin == "mine"
    assert "MYMODULE_DONE" in plugins.event_codes()


def test_trace_hooks(tmp_path, monkeypatch, capsys, deliver):
    monkeypatch.chdir(tmp_path)
    app = create_app({"SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path / 'd.sqlite3'}",
                      "TRACE_HOOKS": True, "LOG_LEVEL": "debug"})
    app.test_client().post(f"/webhook/{SECRET}", data=sample_body("BILL_PAYED"))
    deliver(app)
    err = capsys.readouterr().err
    assert "hook:   handle_event [hook]" in err and "hook:   register_events [hook]" in err
    app.extensions["dolibarr_webhooks"].store.dispose()
