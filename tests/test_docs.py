"""Meta-tests: every hook has a documentation heading and tests; README commands stay true."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dolibarr_webhooks import hookspecs
from dolibarr_webhooks.payload import event_from_body
from dolibarr_webhooks.store import Store
from dolibarr_webhooks_testplugin import body

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "plugins.rst").read_text()
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "dolibarr_webhooks_spec")]


def test_hooks_are_found():
    assert set(HOOKS) == {"register_events", "handled_events", "handle_event"}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_its_signature(hook):
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = f"{hook}({params})"
    assert re.search(rf"^{re.escape(heading)}\n~+\n", GUIDE, re.M), f"docs/plugins.rst lacks a heading {heading}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_in_a_test(hook):
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    assert re.search(rf"def {hook}\(", tests), f"no test implements the {hook} hook"


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: sh\n\n((?:    .+\n)+)", readme)
    assert "dolibarr-webhooks serve" in blocks[0] and "pip install" in blocks[0]
    assert "pytest" in blocks[1] and "pip install" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = [line.strip() for line in blocks[1].splitlines() if "pytest" in line][0]
    assert test_command in ci, ".ci/run must run the README's test command"


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
