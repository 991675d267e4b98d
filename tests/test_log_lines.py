"""The text log line's date and time: ``logs.TextFormatter`` formats each second once (a
tenth of an access line's cost, issue #15) and must still write what ``logging`` writes,
to the millisecond, in the second it belongs to, with or without a ``datefmt``."""

from __future__ import annotations

import logging
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
