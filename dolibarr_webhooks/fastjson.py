"""JSON for the bodies and payloads on the hot path: orjson, with the standard library's
semantics kept for everything orjson declines.

orjson encodes several times faster than ``json`` (bench/HISTORY.rst). orjson is strict RFC 8259; ``json`` also accepts
``NaN``, integers wider than 64 bits, lone surrogates and a UTF-8 BOM. Whatever orjson
refuses is handed to ``json``, so what parses, what does not and every error message are
the standard library's, with one bound: nesting deeper than PHP's ``json_encode`` ever
writes (512 levels) is refused, since ``json`` would then recurse past Python's limit.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import orjson

# PHP's json_encode fails beyond 512 levels (Dolibarr then posts an empty body): nothing
# deeper comes from Dolibarr, and ``json`` cannot encode much deeper without a RecursionError.
MAX_DEPTH = 512


def loads(raw: bytes | str, clean: Callable[[dict], None] | None = None) -> Any:
    """Decode ``raw``; ``clean`` is called on every object, at every depth, and may change it
    in place (the payload's scrub: ``credentials.Scrubber.clean``).

    Raises ``ValueError`` (``json.JSONDecodeError``, or nesting too deep) or
    ``UnicodeDecodeError``, as ``json.loads`` does.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # NaN, a BOM, a lone surrogate, or not JSON: json decides, and words the error
    else:
        depth = _clean_in_place(data, clean)
        if depth is not None:
            if depth > MAX_DEPTH:
                raise _too_deep()
            return data
    try:
        return _bounded(raw, json.loads(raw, object_hook=_hook(clean) if clean else None))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _bounded(raw: bytes | str, data: Any) -> Any:
    # For the standard library's answers (orjson's get their depth from _clean_in_place): counting
    # brackets is a memchr-speed scan; only a body with that many is walked.
    opening = (b"[", b"{") if isinstance(raw, bytes) else ("[", "{")
    if raw.count(opening[0]) + raw.count(opening[1]) > MAX_DEPTH and _depth(data) > MAX_DEPTH:
        raise _too_deep()
    return data


def _too_deep() -> ValueError:
    return ValueError(f"JSON nested too deeply (over {MAX_DEPTH} levels)")


def _depth(value: Any) -> int:
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in item.values() if type(item) is dict else item:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return deepest if isinstance(value, (dict, list)) else 0


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept as is (``separators=(",", ":"), ensure_ascii=False``).

    Always valid UTF-8: a lone surrogate (``"\\ud800"`` in a body, which ``json`` decodes)
    is written back as its escape, so the text can be stored and reads back the same.
    """
    # Without OPT_NON_STR_KEYS: it took a 15 KB invoice's encoding from 13 to 22 us, and a
    # key that is not text (never in a decoded body) goes to json, which writes it as before.
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: an integer wider than 64 bits, a key not text, a surrogate...
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))  # every non-ASCII character escaped
    return text


def _hook(clean: Callable[[dict], None]) -> Callable[[dict], dict]:
    def hook(mapping: dict[str, Any]) -> dict[str, Any]:
        clean(mapping)
        return mapping
    return hook


_INT64_MIN = -9223372036854775808.0


def _clean_in_place(value: Any, clean: Callable[[dict], None] | None) -> int | None:
    """Clean every object; returns the nesting depth (0 for a scalar), or None when a float
    may be an integer orjson could not hold exactly.

    orjson decodes integers from -2**63 to 2**64-1 exactly and wider ones as floats; PHP
    never writes one, but the standard library keeps every digit, so such a body goes to it.
    """
    # Level by level, without recursion (a deeply nested body must not hit Python's limit),
    # so that the depth comes with the walk every body needs anyway. The value itself is
    # checked as the child of a list.
    level: list[Any] = [[value]]
    depth = -1
    while level:
        depth += 1
        below = []
        for item in level:
            if type(item) is dict:
                if clean is not None:
                    clean(item)
                children = item.values()
            else:
                children = item
            for child in children:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
                elif kind is float and not _INT64_MIN <= child < 18446744073709551616.0:
                    return None
        level = below
    return depth
