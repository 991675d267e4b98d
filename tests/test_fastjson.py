"""The hot path's JSON: orjson where it can, the standard library's answer everywhere."""

from __future__ import annotations

import json

import orjson
import pytest

from dolibarr_webhooks import fastjson
from dolibarr_webhooks.samples import sample_body, sample_codes


def dropper(*drop):
    def clean(mapping):
        for key in drop:
            mapping.pop(key, None)
    return clean


def stdlib_scrubbed(raw, drop):
    def hook(mapping):
        for key in drop:
            mapping.pop(key, None)
        return mapping
    return json.loads(raw, object_hook=hook)


def outcome(decode):
    try:
        return decode()
    except ValueError as exc:
        return type(exc), str(exc)


@pytest.mark.parametrize("code", sample_codes())
def test_samples_decode_and_encode_as_the_standard_library(code):
    raw = sample_body(code)
    orjson.loads(raw)  # the fast path is the one taken for what Dolibarr sends
    decoded = fastjson.loads(raw, clean=dropper("db", "note_private"))
    assert decoded == stdlib_scrubbed(raw, ("db", "note_private"))
    assert fastjson.dumps(decoded) == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False)


def test_keys_are_dropped_at_every_depth_and_in_lists():
    raw = b'{"db": 1, "a": [{"db": {"x": 1}, "b": [[{"db": 2, "c": 3}]]}], "d": {"e": {"db": null}}}'
    assert fastjson.loads(raw, clean=dropper("db")) == {"a": [{"b": [[{"c": 3}]]}], "d": {"e": {}}}


@pytest.mark.parametrize("raw", [
    b'{"amount": NaN, "big": Infinity}',             # PHP never writes these, json accepts them
    b'{"id": 123456789012345678901234567890}',       # wider than 64 bits
    b'{"name": "\\ud800"}',                          # a lone surrogate
    b'\xef\xbb\xbf{"triggercode": "BILL_PAYED"}',  # a UTF-8 BOM
])
def test_what_orjson_refuses_or_rounds_is_decoded_by_the_standard_library(raw):
    expected = repr(json.loads(raw))
    assert repr(outcome(lambda: orjson.loads(raw))) != expected  # orjson alone would differ
    assert repr(fastjson.loads(raw, clean=dropper("db"))) == expected


@pytest.mark.parametrize("raw", [b"{", b'{"a": 1,}', b"\xff\xfe{}", b"\xe9", b"", b"[1] [2]", b"nul"])
def test_errors_are_the_standard_librarys(raw):
    error = outcome(lambda: fastjson.loads(raw))
    assert isinstance(error, tuple) and error == outcome(lambda: json.loads(raw))


def test_deep_nesting_is_scrubbed_without_recursion_or_refused_as_a_value_error():
    depth = fastjson.MAX_DEPTH - 1  # as deep as PHP writes: the drop walks it without recursing
    decoded = fastjson.loads(b'{"a":' * depth + b'{"db": 1}' + b"}" * depth, clean=dropper("db"))
    for _ in range(depth):
        decoded = decoded["a"]
    assert decoded == {}
    # 900 levels decode, but json could not encode them again: refused like 100,000.
    for depth in (900, 100_000):
        with pytest.raises(ValueError, match="nested too deeply"):
            fastjson.loads(b"[" * depth + b"]" * depth)


@pytest.mark.parametrize("raw", [b"1", b"-1.5e300", b'"x"', b"null", b"18446744073709551616", b"[1e400]"])
def test_scalars_and_wide_numbers_at_the_top(raw):
    assert repr(fastjson.loads(raw, clean=dropper("db"))) == repr(json.loads(raw))


def test_dumps_falls_back_where_orjson_cannot_encode():
    value = {"big": 2**70, 1: "int key", "text": "é/€"}
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert fastjson.dumps({1: "x", "y": [1.5, None, True]}) == '{"1":"x","y":[1.5,null,true]}'
