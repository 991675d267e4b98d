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
from dolibarr_webhooks_testplugin import HeldFileLock, files_open


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


def test_close_lets_go_of_the_lock_file_and_ends_the_waiting_thread(lock_path):
    """What ``Store.dispose`` asks of it: nothing of the queue is left open, and a later
    turn opens the file again."""
    queue = WriterQueue(lock_path)
    before = set(waiting_threads())
    other = HeldFileLock(lock_path)
    thread, outcome = in_thread(turn_once(queue, 5))  # contended: the waiting thread starts
    time.sleep(0.1)
    other.release()
    thread.join(5)
    assert outcome == {"result": "done"}
    (waiter,) = set(waiting_threads()) - before
    assert files_open(lock_path) == [lock_path]
    queue.close()
    waiter.join(5)
    assert not waiter.is_alive() and files_open(lock_path) == []
    thread, outcome = in_thread(turn_once(queue, 5))
    thread.join(5)
    assert outcome == {"result": "done"} and lock_is_free(lock_path)
    queue.close()
    assert files_open(lock_path) == []


def test_close_during_a_wait_given_up_on_leaves_the_descriptor_to_it_until_the_lock_comes(lock_path):
    """A wait given up on is still in ``flock``: closing its descriptor under it would end it on
    a file that is no longer there (or on another one's, reused). The thread keeps it until
    the lock comes, lets the lock go, then closes it and ends."""
    queue = WriterQueue(lock_path)
    before = set(waiting_threads())
    other = HeldFileLock(lock_path)
    thread, outcome = in_thread(turn_once(queue, 0.2))
    thread.join(5)
    assert isinstance(outcome.get("error"), DeadlinePassed)
    (waiter,) = set(waiting_threads()) - before
    queue.close()
    time.sleep(0.1)
    assert waiter.is_alive() and len(files_open(lock_path)) == 2  # the waiter's descriptor, the other's
    other.release()
    waiter.join(5)
    assert not waiter.is_alive() and files_open(lock_path) == [] and lock_is_free(lock_path)
