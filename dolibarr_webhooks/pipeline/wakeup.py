"""What wakes an idle worker at once: PostgreSQL's NOTIFY, or on SQLite a watch on the file
the store touches after each commit that adds due deliveries (inotify; without it the
worker looks every POLL_INTERVAL)."""

from __future__ import annotations

import os
import threading
import time

from ..store import NOTIFY_CHANNEL, Store, StoreError, driver_connect_args
from .inotify import FolderWatch


class Wakeup:
    """What wakes an idle worker at once: ``wait`` returns on a wake-up, after ``timeout``,
    or once ``wake`` is set (stop(), a handler done, this process's commit), which it looks at
    every ``step``."""

    def wait(self, timeout: float, wake: threading.Event, step: float) -> bool:
        """True when a wake-up (not ``wake``, not the timeout) ended the wait."""
        deadline = time.monotonic() + timeout
        while not wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._woken(min(left, step)):
                return True
        return False

    def drain(self) -> None:
        """Forget the wake-ups received meanwhile (they are looked after together)."""
        self._woken(0)

    def _woken(self, seconds: float) -> bool:
        """True on a wake-up within ``seconds``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class NotifyListener(Wakeup):
    """PostgreSQL LISTEN on its own autocommit connection."""

    def __init__(self, store: Store) -> None:
        import psycopg

        try:
            self.conn = psycopg.connect(**driver_connect_args(store.engine), autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot LISTEN: {exc}") from exc
        try:
            self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as exc:
            # A server that refuses it (a demoted primary, in recovery): the worker tries again
            # every second, and each connection was left to the garbage collector, open.
            self.conn.close()
            raise StoreError(f"cannot LISTEN: {exc}") from exc

    def _woken(self, seconds: float) -> bool:
        import psycopg

        try:
            return any(True for _ in self.conn.notifies(timeout=seconds, stop_after=1))
        except psycopg.Error as exc:
            raise StoreError(f"LISTEN connection lost: {exc}") from exc

    def drain(self) -> None:
        import psycopg

        try:
            for _ in self.conn.notifies(timeout=0):  # every notification queued, not only the first
                pass
        except psycopg.Error as exc:
            raise StoreError(f"LISTEN connection lost: {exc}") from exc

    def close(self) -> None:
        self.conn.close()


class CommitWatch(Wakeup):
    """SQLite: the store touches ``<database>.wake`` after each commit that adds due
    deliveries, in whatever process; that wakes the idle worker at once."""

    def __init__(self, watch: FolderWatch) -> None:
        self.watch = watch

    @classmethod
    def open(cls, store: Store) -> CommitWatch | None:
        if not store.wake_file:
            return None
        folder, name = os.path.split(store.wake_file)
        watch = FolderWatch.open(folder, [name])
        return cls(watch) if watch else None

    def _woken(self, seconds: float) -> bool:
        return self.watch.wait(seconds)

    def close(self) -> None:
        self.watch.close()
