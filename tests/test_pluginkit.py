"""The plugin kit's own helpers: Retry-After, the combining of several targets' failures, the
events a plugin's targets handle."""

from __future__ import annotations

import time
from email.utils import formatdate
from types import SimpleNamespace as Target

import pytest

from dolibarr_webhooks import PermanentFailure, RetryLater
from dolibarr_webhooks.pluginkit import combine_failures, handled_by, retry_after


@pytest.mark.parametrize(("value", "seconds"), [
    ("12", 12.0), (" 1.5 ", 1.5), ("-3", 0.0), (["7", "9"], 7.0), ({"RETRY-AFTER": "4"}, 4.0),
    (None, None), ("", None), ("soon", None), ("nan", None), ("inf", None), ({}, None), ([], None),
    (formatdate(0, usegmt=True), 0.0),  # a date in the past: now
])
def test_retry_after(value, seconds):
    assert retry_after(value) == seconds


def test_retry_after_http_date():
    assert 25 <= retry_after(formatdate(time.time() + 30, usegmt=True)) <= 30


class Unavailable(Exception):
    pass


def test_combine_failures():
    gone, banned = PermanentFailure("a: 404"), PermanentFailure("b: 403")
    busy, down = RetryLater("c: 429", after=7), Unavailable("d: 500")
    assert combine_failures([down]) is down
    both = combine_failures([gone, banned])
    assert type(both) is PermanentFailure and str(both) == "a: 404; b: 403"
    later = combine_failures([gone, busy, RetryLater("e: 503", after=3)])
    assert type(later) is RetryLater and later.after == 7
    mixed = combine_failures([gone, busy, down], Unavailable)
    assert type(mixed) is Unavailable and mixed.__cause__ is down and "c: 429" in str(mixed)
    assert type(combine_failures([gone, down])) is Exception  # the default: the core's backoff
    assert str(combine_failures([down, Unavailable("d: 500")])) == "d: 500"  # one shared error, said once


def test_handled_by():
    assert handled_by([Target(events=("PROPAL_*", "BILL_PAYED")), Target(events=("BILL_PAYED",))]) == [
        "BILL_PAYED", "PROPAL_*"]
    assert handled_by([Target(events=("BILL_PAYED",)), Target(events=None)]) is None
    assert handled_by([]) == []
