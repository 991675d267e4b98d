"""The text log line's date and time: ``logs.TextFormatter`` formats each second once (a
tenth of an access line's cost, issue #15) and must still write what ``logging`` writes,
to the millisecond, in the second it belongs to, with or without a ``datefmt``. And the
lines the service does not write itself, in its format."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

from dolibarr_webhooks.logs import TextFormatter


def _record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("dolibarr_webhooks.access", logging.INFO, __file__, 1, "a line", (), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


@pytest.mark.parametrize("datefmt", [None, "[%Y-%m-%d %H:%M:%S %z]"])
def test_each_line_has_its_own_time_as_logging_writes_it(datefmt):
    ours, logging_own = TextFormatter(datefmt=datefmt), logging.Formatter(datefmt=datefmt)
    start = int(time.time())
    # Within a second, across to the next, back to an earlier one (a line can be formatted
    # after a later one), and a second later again.
    for created in (start + 0.001, start + 0.5, start + 0.999, start + 1.0, start + 1.25, start + 0.75, start + 61.5):
        record = _record_at(created)
        assert ours.formatTime(record, datefmt) == logging_own.formatTime(record, datefmt), created
        assert ours.format(record).split(" INFO ")[0] == logging_own.formatTime(record, datefmt)


def test_one_formatter_asked_with_and_without_a_datefmt():
    ours, logging_own = TextFormatter(), logging.Formatter()
    record = _record_at(time.time())
    for datefmt in (None, "%H:%M", None, "%Y"):
        assert ours.formatTime(record, datefmt) == logging_own.formatTime(record, datefmt), datefmt


_OTHERS_LINES = textwrap.dedent("""
    import logging, threading
    from dolibarr_webhooks import create_app

    create_app({"SECRET": "s3cr3t-" * 4, "DATABASE_URL": "sqlite:///" + __import__("sys").argv[1],
                "LOG_FORMAT": "json"})
    logging.getLogger("psycopg").warning("error ignored terminating <Pipeline>: postgresql://u:pw@h/db")
    logging.getLogger("urllib3").info("below the warnings: not written")
    thread = threading.Thread(target=lambda: 1 / 0, name="a-lane")
    thread.start()
    thread.join()
""")


def test_other_libraries_warnings_and_thread_failures_are_the_services_lines(tmp_path):
    """In a process whose logging is the service's, psycopg's warning ("error ignored terminating
    <psycopg.Pipeline ...>", on a full disk) and a thread's uncaught exception were written bare,
    breaking a JSON log: they are JSON lines, scrubbed, the traceback in ``exception``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    result = subprocess.run([sys.executable, "-c", _OTHERS_LINES, str(tmp_path / "x.sqlite3")], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line]  # every line is JSON
    psycopg = [line for line in lines if line["logger"] == "psycopg"]
    assert [line["message"] for line in psycopg] == ["error ignored terminating <Pipeline>: postgresql://***@h/db"]
    assert not [line for line in lines if line["logger"] == "urllib3"]
    failure = [line for line in lines if line["message"] == "thread a-lane stopped"]
    assert failure and failure[0]["level"] == "error" and "ZeroDivisionError" in failure[0]["exception"]
