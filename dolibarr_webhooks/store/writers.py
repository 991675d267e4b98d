"""The writers' queue of one SQLite file: ``flock`` on ``<database>.lock``."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time

from .failures import DeadlinePassed


class WriterQueue:
    """Writers of one SQLite file take turns through ``flock`` on ``<database>.lock``.

    SQLite's busy handler sleeps 1, 2, 5, 10... ms between tries, so a writer waiting for a
    lock held 3 ms waits about 8, and under steady load keeps losing to the holder. The
    kernel wakes a ``flock`` waiter as soon as the lock is released (bench/README.rst has the
    p99 before and after).

    ``flock`` has no timeout, and a request must give up at its deadline. When the lock is
    taken, a request in the main thread (gunicorn's sync workers) waits in ``flock`` itself,
    interrupted by ``SIGALRM`` at the deadline; in another thread it waits in a thread of
    its own (``_PendingLock``, kept across turns: starting one for each contended turn cost
    CPU on every request), and stops waiting at the deadline. The uncontended turn
    costs one ``flock`` call, as before.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._pending: _PendingLock | None = None  # a wait a request gave up on, still running

    @contextlib.contextmanager
    def turn(self, deadline: float | None = None):
        """This process's turn; with ``deadline`` (a ``time.monotonic()`` instant),
        ``DeadlinePassed`` when it has not come by then."""
        if deadline is None:
            self._thread_lock.acquire()
        elif not self._thread_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise DeadlinePassed("waiting for this process's other writers")
        try:
            if self._fd is None or self._pid != os.getpid():  # never share a descriptor across a fork
                self._fd, self._pid = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
                self._pending = None
            self._lock_by(deadline)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _lock_by(self, deadline: float | None) -> None:
        # A wait an earlier request gave up on may still run: take it over (a second flock on
        # the same descriptor would not queue behind it, and its release would be ours).
        pending, self._pending = self._pending, None
        if pending is not None and not pending.adopt():
            pending = None
        if pending is None:
            if deadline is None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                return
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if threading.current_thread() is threading.main_thread():
                    self._lock_with_alarm(deadline)
                    return
                pending = _PendingLock(self._fd)
        if pending.wait(None if deadline is None else deadline - time.monotonic()):
            return
        self._pending = pending
        raise DeadlinePassed(_QUEUE_WAIT)

    def _lock_with_alarm(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed(_QUEUE_WAIT)
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, remaining)
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except DeadlinePassed:
                # The alarm may have come just after the lock did: never keep it on a failure
                # (unlocking a lock not held does nothing).
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                raise
        finally:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


_QUEUE_WAIT = "waiting for the writers of other processes (the SQLite file's lock)"


def _alarm(_signum, _frame) -> None:
    raise DeadlinePassed(_QUEUE_WAIT)


class _PendingLock:
    """A blocking ``flock`` in a thread, that the request waiting for it may give up on: the
    lock is then released as soon as it comes, unless a later request adopts the wait."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._guard = threading.Lock()
        self._taken = threading.Event()
        self._wanted = True
        self._released = False
        threading.Thread(target=self._take, name="sqlite-writer-turn", daemon=True).start()

    def _take(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        with self._guard:
            self._taken.set()
            if not self._wanted:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._released = True

    def wait(self, timeout: float | None) -> bool:
        """True when the caller holds the lock."""
        if self._taken.wait(None if timeout is None else max(0.0, timeout)):
            return True
        with self._guard:
            if self._taken.is_set():  # came just now
                return True
            self._wanted = False
            return False

    def adopt(self) -> bool:
        """Want the lock again; False when it already came and went."""
        with self._guard:
            if self._released:
                return False
            self._wanted = True
            return True
