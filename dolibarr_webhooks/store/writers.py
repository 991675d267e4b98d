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
    kernel wakes a ``flock`` waiter as soon as the lock is released (bench/HISTORY.rst has the
    p99 before and after).

    ``flock`` has no timeout, and a request must give up at its deadline. When the lock is
    taken, a request in the main thread (gunicorn's sync workers) waits in ``flock`` itself,
    interrupted by ``SIGALRM`` at the deadline; in another thread it hands the wait to the
    process's waiting thread (``_LockWaiter``, started once and kept: a thread started for
    each contended turn was 3 % of the web processes' Python time at c=16, issue #15), and
    stops waiting at the deadline. The uncontended turn costs one ``flock`` call, as before.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._waiter: _LockWaiter | None = None

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
                self._waiter = None  # the parent's thread is not in this process
            self._lock_by(deadline)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        """The store is disposed of: let go of the lock file (a later turn opens it again) and
        end the waiting thread. A descriptor the thread is still in ``flock`` on, for a request
        that gave up, is closed by the thread once the lock comes."""
        with self._thread_lock:  # no turn is being taken
            if self._fd is not None and self._pid == os.getpid():
                if self._waiter is None or self._waiter.stop():
                    os.close(self._fd)
            self._fd = self._pid = self._waiter = None

    def _lock_by(self, deadline: float | None) -> None:
        # While the waiting thread is in flock for a request that gave up, the next request
        # takes that wait over: a second flock on the same descriptor would not queue behind
        # it, and its release would be ours.
        if self._waiter is None or self._waiter.idle():
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
            if self._waiter is None:
                self._waiter = _LockWaiter(self._fd)
        if not self._waiter.take(None if deadline is None else deadline - time.monotonic()):
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


class _LockWaiter:
    """A thread that waits in a blocking ``flock`` for the request that asks (one at a time:
    the requests of a process take turns through ``WriterQueue._thread_lock``), which may give
    up at its deadline: the lock is then released as soon as it comes, unless the next
    request takes the wait over. Between waits the thread sleeps on a condition."""

    _IDLE, _WAITING, _TAKEN = range(3)

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._changed = threading.Condition(threading.Lock())
        self._state = self._IDLE
        self._wanted = False  # a request is waiting for the lock now
        self._stopped = False
        threading.Thread(target=self._run, name="sqlite-writer-turn", daemon=True).start()

    def idle(self) -> bool:
        """Not in ``flock``, nor about to be: the caller may lock the descriptor itself."""
        with self._changed:
            return self._state == self._IDLE and not self._wanted

    def take(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the lock; True when the caller holds it."""
        with self._changed:
            self._wanted = True
            self._changed.notify_all()
            if self._changed.wait_for(lambda: self._state == self._TAKEN,
                                      None if timeout is None else max(0.0, timeout)):
                self._state = self._IDLE
                return True
            self._wanted = False  # the thread lets the lock go when it comes
            return False

    def stop(self) -> bool:
        """End the thread (no request is waiting: ``WriterQueue.close``). True when it was idle:
        the caller closes the descriptor; False when it is in ``flock`` for a request that
        gave up: it lets the lock go and closes the descriptor itself once the lock comes."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
            return self._state == self._IDLE

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wanted or self._stopped)
                if self._stopped:
                    return
                self._state = self._WAITING
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with self._changed:
                if self._wanted:
                    self._wanted, self._state = False, self._TAKEN
                    self._changed.notify_all()
                else:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    self._state = self._IDLE
                    if self._stopped:
                        os.close(self._fd)
                        return
