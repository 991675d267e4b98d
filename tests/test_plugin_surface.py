"""The plugin surface: the plugins under plugins/ import only ``dolibarr_webhooks`` and
``dolibarr_webhooks.pluginkit``; docs/plugins.rst documents exactly ``pluginkit.__all__``;
``pluginkit`` loads without Flask; and the guide's example plugin runs as written."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

import dolibarr_webhooks
from dolibarr_webhooks import pluginkit
from dolibarr_webhooks import ConfigError, PermanentFailure, PluginDisabled
from dolibarr_webhooks.pluginkit import DEAD, DELIVERED, Alert, Outcome
from dolibarr_webhooks.testing import local_http_server, overlay_venv, rst_code_blocks

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "plugins.rst").read_text(encoding="utf-8")
PUBLIC_MODULES = {"dolibarr_webhooks", "dolibarr_webhooks.pluginkit"}


def plugin_sources() -> list[Path]:
    """Every .py of every plugin package, not its tests, its templates or what a build left."""
    skipped = {"tests", "templates", "build", ".venv", "__pycache__"}
    return sorted(path for path in (ROOT / "plugins").glob("*/**/*.py")
                  if not skipped & set(path.relative_to(ROOT / "plugins").parts[1:-1])
                  and not any(part.endswith(".egg-info") for part in path.parts))


def core_imports(path: Path) -> list[str]:
    """What ``path`` takes from the core that is not public, as ``module`` or ``module.name``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            bad += [m for m in modules if m.split(".")[0] == "dolibarr_webhooks" and m not in PUBLIC_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "dolibarr_webhooks":
                continue
            if node.module not in PUBLIC_MODULES:
                bad.append(node.module)
            elif node.module == "dolibarr_webhooks":
                # ``from dolibarr_webhooks import catalogue`` would reach a module: only the
                # package's own public names (and the kit) may come from it.
                allowed = {*dolibarr_webhooks.__all__, "pluginkit"}
                bad += [f"dolibarr_webhooks.{a.name}" for a in node.names if a.name not in allowed]
            else:
                bad += [f"{node.module}.{a.name}" for a in node.names if a.name not in pluginkit.__all__]
    return bad


def test_the_plugins_are_found():
    names = {path.relative_to(ROOT / "plugins").parts[0] for path in plugin_sources()}
    assert {"dolibarr-webhooks-email", "dolibarr-webhooks-slack", "dolibarr-webhooks-sync"} <= names
    assert not [p for p in plugin_sources() if "tests" in p.parts or "templates" in p.parts]


@pytest.mark.parametrize("path", plugin_sources(), ids=lambda p: str(p.relative_to(ROOT / "plugins")))
def test_plugins_import_only_the_public_surface(path):
    assert core_imports(path) == [], (
        f"{path.relative_to(ROOT)} imports the core's internals; use dolibarr_webhooks.pluginkit")


def test_the_import_check_can_fail(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent("""\
        import dolibarr_webhooks.catalogue
        from dolibarr_webhooks import catalogue, hookimpl
        from dolibarr_webhooks.describe import summary
        from dolibarr_webhooks.pluginkit import summary, not_in_the_kit
        from . import dolibarr_webhooks
    """))
    assert core_imports(sample) == ["dolibarr_webhooks.catalogue", "dolibarr_webhooks.catalogue",
                                    "dolibarr_webhooks.describe", "dolibarr_webhooks.pluginkit.not_in_the_kit"]


def kit_section() -> str:
    match = re.search(r"^The plugin kit\n-+\n(.*?)(?=^[^\n]+\n[-=]{3,}\n|\Z)", GUIDE, re.M | re.S)
    assert match, "docs/plugins.rst has no section 'The plugin kit'"
    return match.group(1)


def kit_entries(section: str) -> Counter:
    """The names whose entry a paragraph of the section opens: ``name`` then its description
    (a line inside a paragraph that happens to start with a literal is not an entry)."""
    paragraphs = re.split(r"\n\s*\n", section)
    return Counter(match.group(1) for paragraph in paragraphs
                   if (match := re.match(r"``([A-Za-z_][A-Za-z0-9_]*)``[\s:]", paragraph + "\n")))


def test_the_entries_are_paragraphs_that_open_with_the_name():
    assert kit_entries("``a`` ``(x)``: one.\n``b`` and more\n\n``c``: two\n\n    ``d`` code\n") == {"a": 1, "c": 1}


def test_the_plugin_kit_section_documents_exactly_its_names():
    entries = kit_entries(kit_section())
    assert sorted(set(pluginkit.__all__) - set(entries)) == [], "undocumented in 'The plugin kit'"
    assert sorted(set(entries) - set(pluginkit.__all__)) == [], "documented but not in pluginkit.__all__"
    assert [name for name, count in entries.items() if count > 1] == [], "documented twice"


def test_every_kit_name_exists():
    assert len(set(pluginkit.__all__)) == len(pluginkit.__all__)
    for name in pluginkit.__all__:
        assert hasattr(pluginkit, name), name


def test_the_kit_loads_without_flask():
    code = ("import sys, dolibarr_webhooks, dolibarr_webhooks.pluginkit; "
            "print(sorted(m for m in sys.modules if m == 'flask' or m.startswith(('flask.', 'werkzeug'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def code_blocks(section: str, language: str) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of one section of the guide, dedented."""
    return rst_code_blocks(GUIDE, language, section=section)


def test_rst_code_blocks_reads_a_readme_s_examples_as_written():
    text = textwrap.dedent("""\
        Install
        -------

        .. code-block:: sh

            pip install hello

        .. code-block:: python

            def greet():
                return "hi"


            print(greet())

        Run
        ---

        .. code-block:: sh

            hello --loud
        """)
    assert rst_code_blocks(text, "sh") == ["pip install hello\n", "hello --loud\n"]
    assert rst_code_blocks(text, "python") == ['def greet():\n    return "hi"\n\n\nprint(greet())\n']
    assert rst_code_blocks(text, "sh", section="Run") == ["hello --loud\n"]
    assert rst_code_blocks(text, "toml") == []
    with pytest.raises(LookupError, match="Usage"):
        rst_code_blocks(text, "sh", section="Usage")


@pytest.fixture
def forward(tmp_path, monkeypatch):
    """The ``forward`` plugin the guide's hook examples make, as one module."""
    path = tmp_path / "dolibarr_webhooks_forward.py"
    path.write_text("\n\n".join(code_blocks("Hooks", "python")))
    spec = importlib.util.spec_from_file_location("dolibarr_webhooks_forward", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class Receiver(BaseHTTPRequestHandler):
    """The other system: keeps what is posted; answers ``status`` (a class attribute)."""

    status = 202
    posted: list[tuple[str, dict]] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).posted.append((self.path, body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_guides_hook_examples_make_a_working_plugin(forward, dolibarr_event):
    registered = []
    forward.register_events(register=lambda code, **kw: registered.append((code, kw["label_fr"])))
    assert registered == [("MYMODULE_VALIDATE", "Truc validé")]
    with pytest.raises(PluginDisabled):
        forward.read_settings(config={})
    with pytest.raises(ConfigError) as info:
        forward.read_settings(config={"url": "ftp://x"})
    assert info.value.setting == "DOLIBARR_WEBHOOKS_FORWARD_URL"

    handler = type("ForwardReceiver", (Receiver,), {"posted": []})
    with local_http_server(handler) as server:
        settings = forward.read_settings(config={"url": f"http://127.0.0.1:{server.server_port}"})
        assert forward.handled_events(settings=settings) == ("PROPAL_CLOSE_SIGNED",)
        event = dolibarr_event("PROPAL_CLOSE_SIGNED")
        forward.handle_event(event=event, settings=settings)
        failed = Outcome(DEAD, "email", event, 3, "SMTP 550")
        forward.delivery_outcome(outcome=Outcome(DELIVERED, "email", event, 1), settings=settings)
        forward.delivery_outcome(outcome=failed, settings=settings)
        forward.alert(alert=Alert(DEAD, "email", dead=(failed,)), settings=settings)
        handler.status = 404
        with pytest.raises(PermanentFailure, match="404"):
            forward.handle_event(event=event, settings=settings)

    (path, sent), dead, alert, _ = handler.posted
    assert path == "/events" and sent["id"] == event.id and sent["trigger_code"] == "PROPAL_CLOSE_SIGNED"
    assert dead == ("/dead", {"plugin": "email", "event": event.id, "error": "SMTP 550",
                              "replay": f"dolibarr-webhooks replay {event.id} --plugin email"})
    assert alert[0] == "/alerts" and alert[1]["text"].startswith("dolibarr-webhooks: email delivery dead\n")
    assert "Proposal PR2611-0088 signed" in alert[1]["text"]


@pytest.mark.slow
def test_the_guides_plugin_installs_loads_and_passes_the_guides_test(tmp_path):
    """The minimal package of docs/plugins.rst, pip-installed as written: the service finds it
    through its entry point, reads its settings once, and the guide's own test passes on it."""
    (pyproject,) = code_blocks("A minimal plugin package", "toml")
    (module,) = code_blocks("A minimal plugin package", "python")
    (test,) = code_blocks("Testing a plugin", "python")
    package = tmp_path / "dolibarr-webhooks-hello"
    package.mkdir()
    (package / "pyproject.toml").write_text(pyproject)
    (package / "dolibarr_webhooks_hello.py").write_text(module)
    python = overlay_venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    str(package)], check=True, timeout=300)
    env = {"PATH": "/usr/bin:/bin", "DOLIBARR_WEBHOOKS_SECRET": "x" * 32, "DOLIBARR_WEBHOOKS_PLUGINS": "hello",
           "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}

    def plugins(**extra: str) -> dict:
        result = subprocess.run([str(python), "-c", "from dolibarr_webhooks.cli import main; main()", "plugins",
                                 "--json"], capture_output=True, text=True, cwd=tmp_path, env={**env, **extra},
                                timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return next(p for p in json.loads(result.stdout) if p["name"] == "hello")

    hello = plugins()
    assert (hello["status"], hello["reason"]) == ("disabled", "set DOLIBARR_WEBHOOKS_HELLO_GREETING")
    hello = plugins(DOLIBARR_WEBHOOKS_HELLO_GREETING="Hello")
    assert hello["status"] == "enabled" and hello["events"] == ["BILL_PAYED", "COMPANY_*"]
    assert hello["hooks"] == ["alert", "handle_event", "handled_events", "read_settings"]

    (tmp_path / "test_hello.py").write_text(test)
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hello.py"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout + result.stderr
