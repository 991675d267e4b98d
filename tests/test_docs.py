"""Meta-tests: every hook has a documentation heading and tests; README commands stay true."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dolibarr_webhooks import hookspecs
from dolibarr_webhooks.pipeline.parse import event_from_body
from dolibarr_webhooks.store import Store
from dolibarr_webhooks.testing import free_port, fresh_venv, wait_for, wait_for_port
from dolibarr_webhooks_testplugin import body
from production_helpers import CAPTURED, dolibarr_send

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "plugins.rst").read_text()
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "dolibarr_webhooks_spec")]


def test_hooks_are_found():
    assert set(HOOKS) == {"register_events", "read_settings", "handled_events", "handle_event",
                          "delivery_outcome", "alert"}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_its_signature(hook):
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = f"{hook}({params})"
    assert re.search(rf"^{re.escape(heading)}\n~+\n", GUIDE, re.M), f"docs/plugins.rst lacks a heading {heading}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_in_a_test(hook):
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    assert re.search(rf"def {hook}\(", tests), f"no test implements the {hook} hook"


def readme_command(number: int) -> str:
    """The README's opening command ``number`` as .ci/run reads it."""
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "readme-command"), str(number)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_readme_opens_with_the_two_commands():
    first, second = readme_command(1), readme_command(2)
    assert first == "pip install . && dolibarr-webhooks serve"
    assert "pip install" in second and second.endswith("&& python -m pytest") and "\n" not in second
    # CI runs the README's test command as read from the README, and installs nothing else with pip.
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'command="$(.ci/readme-command 2)"' in ci and 'eval "$command"' in ci
    assert "pip install" not in ci


@pytest.mark.parametrize("plugin", sorted(p.name for p in (ROOT / "plugins").iterdir()))
def test_each_plugin_readme_has_a_test_command_that_installs_pytest(plugin):
    """pytest comes with the test extras only: a plugin README's command installs them."""
    readme = (ROOT / "plugins" / plugin / "README.rst").read_text()
    command = re.search(r"\.\. code-block:: sh\n\n    (.+)\n", readme).group(1)
    assert command == (f"pip install -e '.[test]' -e './plugins/{plugin}[test]' "
                       f"&& python -m pytest plugins/{plugin}/tests")
    assert re.search(r'^test = \[[^\]]*"pytest>=', (ROOT / "plugins" / plugin / "pyproject.toml").read_text(), re.M)


@pytest.mark.slow
def test_readme_first_command_serves_a_real_dolibarr_request(tmp_path):
    """The README's first command, typed in a copy of the project inside a new virtual environment
    (with the pip python3 -m venv ships): it installs, serves, prints the URL to give Dolibarr, and
    a body a real Dolibarr 22.0.4 posted, posted the way Dolibarr posts it to that URL, is stored."""
    source = tmp_path / "dolibarr-webhooks"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".env", "*.sqlite3*", ".pytest_cache"))
    venv = fresh_venv(tmp_path / "venv").parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_", "VIRTUAL_ENV"))}
    port = free_port()
    env.update(PATH=f"{venv}:{env['PATH']}", VIRTUAL_ENV=str(venv.parent), PYTHONUNBUFFERED="1",
               DOLIBARR_WEBHOOKS_PORT=str(port))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(["sh", "-c", readme_command(1)], cwd=source, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: re.search(r"^\s+(http://\S+/webhook/\S+)$", log.read_text(), re.M) or process.poll(), 600,
                 interval=0.5, message=lambda: log.read_text()[-3000:])
        wait_for_port(port, process=process, timeout=120)
        url = re.search(r"^\s+(http://\S+/webhook/\S+)$", log.read_text(), re.M).group(1)
        report = dolibarr_send(url, CAPTURED / "04_BILL_VALIDATE.json", "--dolibarr=22")
        assert report["success"] and report["http_code"] == 200, (report, log.read_text()[-3000:])
        event_id = json.loads(report["answer"])["id"]

        def shown() -> dict | None:
            result = subprocess.run(["dolibarr-webhooks", "show", event_id, "--json"], cwd=source, env=env,
                                    capture_output=True, text=True, timeout=120)
            data = json.loads(result.stdout) if result.returncode == 0 else None
            return data if data and all(d["status"] == "delivered" for d in data["deliveries"]) else None

        event = wait_for(shown, 30, interval=0.5, message=lambda: log.read_text()[-3000:])
        assert event["trigger_code"] == "BILL_VALIDATE" and event["deliveries"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_the_documented_sqlite_backup_copies_a_live_store(tmp_path):
    """contrib/README.rst's backup command, run as written (paths swapped) while events keep
    arriving: the copy is a sound database with every event committed before it began."""
    text = (ROOT / "contrib" / "README.rst").read_text()
    block = re.search(r"^Backups\n.*?\.\. code-block:: sh\n\n((?:        [^\n]*\n)+)", text, re.M | re.S)
    assert block, "contrib/README.rst: no Backups section with a command"
    command = "\n".join(line[8:] for line in block.group(1).splitlines())
    database, copy = tmp_path / "dolibarr-webhooks.sqlite3", tmp_path / "backup.sqlite3"
    command = (command.replace("/opt/dolibarr-webhooks/venv/bin/python", sys.executable)
               .replace("/var/lib/dolibarr-webhooks/dolibarr-webhooks.sqlite3", str(database))
               .replace("/var/backups/dolibarr-webhooks.sqlite3", str(copy)))

    store = Store(f"sqlite:///{database}")
    store.migrate()

    def ingest(number: int) -> None:
        store.ingest(event_from_body(body(object_id=number)), ["log"], 600)

    for number in range(200):
        ingest(number)
    stop = threading.Event()

    def keep_posting() -> None:
        number = 1000
        while not stop.is_set():
            ingest(number)
            number += 1

    writer = threading.Thread(target=keep_posting)
    writer.start()
    try:
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        writer.join(30)
        store.dispose()
    assert result.returncode == 0, result.stderr
    backup = Store(f"sqlite:///{copy}")
    try:
        with backup.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            ids = {row[0] for row in conn.exec_driver_sql("SELECT object_id FROM events")}
            delivered = conn.exec_driver_sql("SELECT count(*) FROM deliveries").scalar()
        assert {str(n) for n in range(200)} <= ids
        assert delivered == len(ids), "each event with its delivery: one snapshot"
    finally:
        backup.dispose()
