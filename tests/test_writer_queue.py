"""The writers' queue of an SQLite file (``store.writers.WriterQueue``): a turn is ``flock`` on
``<database>.lock``, waited for until a deadline. Another writer's lock is held here through
a descriptor of its own, as another process holds it (``flock`` locks of two open files
conflict, in one process or two); the turns are taken from threads other than the main one,
as gunicorn's threaded workers take them, where the wait is handed to a waiting thread."""

from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from dolibarr_webhooks.store import DeadlinePassed
from dolibarr_webhooks.store.writers import WriterQueue
from dolibarr_webhooks.testing import wait_for
from dolibarr_webhooks_testplugin import HeldFileLock


def lock_is_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def in_thread(function):
    """``function()``'s result or exception, run in a thread of its own (not the main one)."""
    outcome = {}

    def run():
        try:
            outcome["result"] = function()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def turn_once(queue: WriterQueue, seconds: float, entered: list[float] | None = None):
    def take():
        with queue.turn(time.monotonic() + seconds):
            if entered is not None:
                entered.append(time.monotonic())
        return "done"
    return take


def waiting_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "sqlite-writer-turn"]


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / "webhooks.sqlite3.lock")


def test_a_turn_waits_for_the_other_writer_and_comes_when_it_lets_go(lock_path):
    queue = WriterQueue(lock_path)
    other = HeldFileLock(lock_path)
    entered: list[float] = []
    thread, outcome = in_thread(turn_once(queue, 5, entered))
    time.sleep(0.2)
    assert entered == []  # still waiting
    released = time.monotonic()
    other.release()
    thread.join(5)
    assert outcome == {"result": "done"}
    assert entered[0] - released < 0.5  # woken by the release, not by a poll
    assert lock_is_free(lock_path)  # and let go after the turn


def test_a_turn_gives_up_at_its_deadline_and_never_keeps_the_lock_that_comes_after(lock_path):
    queue = WriterQueue(lock_path)
    other = HeldFileLock(lock_path)
    started = time.monotonic()
    thread, outcome = in_thread(turn_once(queue, 0.3))
    thread.join(5)
    assert isinstance(outcome.get("error"), DeadlinePassed)
    assert 0.25 < time.monotonic() - started < 2
    other.release()
    # The wait given up on still ran: the lock it got is let go at once.
    wait_for(lambda: lock_is_free(lock_path), timeout=5)


def test_the_next_turn_takes_over_a_wait_given_up_on(lock_path):
    queue = WriterQueue(lock_path)
    other = HeldFileLock(lock_path)
    thread, outcome = in_thread(turn_once(queue, 0.2))
    thread.join(5)
    assert isinstance(outcome.get("error"), DeadlinePassed)
    entered: list[float] = []
    thread, outcome = in_thread(turn_once(queue, 5, entered))
    time.sleep(0.2)
    assert entered == []
    other.release()
    thread.join(5)
    assert outcome == {"result": "done"} and len(entered) == 1
    assert lock_is_free(lock_path)


def test_the_waiting_thread_is_started_once_and_serves_every_contended_turn(lock_path):
    queue = WriterQueue(lock_path)
    before = set(waiting_threads())
    seen = set()
    for _ in range(3):
        other = HeldFileLock(lock_path)
        thread, outcome = in_thread(turn_once(queue, 5))
        time.sleep(0.1)
        other.release()
        thread.join(5)
        assert outcome == {"result": "done"}
        seen.update(set(waiting_threads()) - before)
    assert len(seen) == 1  # one thread, alive across the turns (not one started for each)
    assert all(thread.is_alive() for thread in seen)
    assert lock_is_free(lock_path)
