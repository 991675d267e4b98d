"""An event's payload (its scrubbed JSON) as an SQLite store keeps it: compressed with lz4.

A Dolibarr invoice's payload is about 15 KB of JSON: four overflow pages of the file, written
to the log at every commit and again into the file at every checkpoint, none of them shared
with another event's. Compressed, it is about 3.7 KB, and one page at most. Measured
(bench/HISTORY.rst, issue #15): a quarter of the disk, and at c=16, where a transaction
carries several events and shares their index pages, 0.28 against 0.18 ms of CPU per event
committed; compressing costs 0.02 ms. PostgreSQL compresses its own payloads (schema
version 7: lz4 in its TOAST storage), so its column keeps the text.

A value is text (what stores before this one wrote, and a payload that does not shrink) or
bytes: a format byte, then the lz4 block with its size. Every reader goes through
``parsed``, so both read the same.
"""

from __future__ import annotations

from typing import Any

import lz4.block

from .. import fastjson

_LZ4_BLOCK = 1  # the format byte: an lz4 block with its size in front (lz4.block.compress's default)


def packed(text: str) -> str | bytes:
    """What the SQLite column keeps for the payload ``text``."""
    raw = text.encode()
    kept = bytes((_LZ4_BLOCK,)) + lz4.block.compress(raw)
    return kept if len(kept) < len(raw) else text


def unpacked(value: str | bytes) -> str:
    """The payload's JSON text, from what the column keeps."""
    if isinstance(value, str):
        return value
    if value[:1] != bytes((_LZ4_BLOCK,)):
        raise ValueError(f"a stored payload in an unknown format ({value[:1]!r}): written by a newer release?")
    return lz4.block.decompress(value[1:]).decode()


def parsed(value: str | bytes | None) -> Any:
    """The payload as Python objects; None for none (a duplicate, a quarantined body)."""
    return fastjson.loads(unpacked(value)) if value else None
