"""The ids this service makes: an event's, ordered by its time of receipt, and a request's."""

from __future__ import annotations

import random
import time


def random_hex() -> str:
    """64 random bits in hex, for ids that must be unique, not secret: event and request ids.
    From Python's own generator, seeded by the system at start and again in each forked
    process. ``secrets`` asks the kernel (``getrandom``) each time, a system call for which
    the thread lets go of the GIL: among a process's 16 busy threads, taking it back could
    cost that request a wait of up to the interpreter's switch interval (issue #15)."""
    return f"{random.getrandbits(64):016x}"


def new_event_id(at: float | None = None) -> str:
    """Time-ordered, unique across hosts: the milliseconds of ``at`` (now), then 64 random bits."""
    return f"evt_{int((time.time() if at is None else at) * 1000):012x}{random_hex()}"


def event_id_floor(milliseconds: int) -> str:
    """The least id an event made at ``milliseconds`` (since the epoch) or later can have."""
    return f"evt_{max(0, milliseconds):012x}"


def earliest_event_id(received_since: float) -> str:
    """An id below that of any event received at ``received_since`` or later, so that a search
    by time can read an index of ids. An event's id is made just before its time of receipt, on
    the same clock: a minute of margin covers that and a clock stepped back."""
    return event_id_floor(int((received_since - 60) * 1000))
