"""Group commit for an SQLite store: the fsync that makes a commit durable, shared by every
writer of the file waiting for one, in this process's threads and in other processes.

With ``synchronous=FULL`` SQLite fsyncs the write-ahead log inside each COMMIT, while the
writer holds the file's write lock: writers take turns for the fsync too, one fsync per
request. Here the store's connections commit with ``synchronous=NORMAL`` (in WAL mode:
consistent after a crash, the commit written to the log but not yet synced), then, with the
write lock released, the writer waits for ``SharedSync.wait_durable``: an ``fdatasync`` of
the log that began after its commit. Whoever finds no sync covering its commit syncs for
everyone who committed before it began; the others wait and find themselves covered.
Nothing is acknowledged before the fsync that covers it has returned, as with FULL.

The counters live in ``<database>.sync``, 32 bytes mapped by every process of the store:
the number of commits, the number the last successful sync covered, the number the last
failed sync would have covered, and how many fsyncs ran (``read_counters``). A commit's
number is taken inside the writers' turn (``store.WriterQueue``), right after its COMMIT,
so numbers follow the order of the commits in the log. A failed fsync fails every commit
it was to cover (on Linux a second fsync may succeed after the pages were dropped): those
requests are answered 503, never 200.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading

# Native order and alignment ('@'): each counter is read and written by one 8-byte load or
# store, never torn when another process updates it ('<' would assemble it byte by byte).
_COUNTER = struct.Struct("@Q")
_COMMITS, _SYNCED, _FAILED, _SYNCS = 0, 8, 16, 24
_SIZE = 32


def read_counters(database_path: str) -> dict[str, int]:
    """The counters of an SQLite store's group commit, read from its file (zeros when none)."""
    try:
        with open(database_path + ".sync", "rb") as fh:
            data = fh.read(_SIZE).ljust(_SIZE, b"\0")
    except FileNotFoundError:
        data = bytes(_SIZE)
    names = ("commits", "synced", "failed", "fsyncs")
    return {name: _COUNTER.unpack_from(data, offset)[0] for name, offset in zip(names, range(0, _SIZE, 8))}


class SyncFailed(OSError):
    """The fsync that was to make this commit durable failed: it may be lost."""


class SharedSync:
    """The write-ahead log's fsync of one SQLite file, shared by its writers."""

    def __init__(self, database_path: str) -> None:
        self.log_path = database_path + "-wal"
        self.path = database_path + ".sync"
        self._guard = threading.Lock()  # one syncer per process; flock orders the processes
        # Held to number a commit and to close: a store disposed of while a writer numbers its
        # commit (a worker's lane recording an outcome at shutdown) must not unmap the
        # counters under it. Not ``_guard``, which the syncer holds through the fsync: the
        # next commit is numbered while the fsync runs.
        self._mapping = threading.Lock()
        self._map: mmap.mmap | None = None
        self._pid: int | None = None
        self._fd: int | None = None
        self.syncs = 0  # fsyncs this process ran (for tests and benchmarks)

    def _counters(self) -> mmap.mmap:
        if self._map is None or self._pid != os.getpid():  # a forked child maps the file anew
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(fd).st_size < _SIZE:
                fcntl.flock(fd, fcntl.LOCK_EX)  # the first processes may race to size it
                try:
                    if os.fstat(fd).st_size < _SIZE:
                        os.ftruncate(fd, _SIZE)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            self._map, self._fd, self._pid = mmap.mmap(fd, _SIZE), fd, os.getpid()
        return self._map

    def _read(self, offset: int) -> int:
        return _COUNTER.unpack_from(self._map, offset)[0]

    def _write(self, offset: int, value: int) -> None:
        _COUNTER.pack_into(self._map, offset, value)

    def committed(self) -> int:
        """Called in the writers' turn, right after a COMMIT: the commit's number."""
        with self._mapping:
            self._counters()  # once per operation: checking for a fork costs a getpid() call
            number = self._read(_COMMITS) + 1
            self._write(_COMMITS, number)
        return number

    def wait_durable(self, number: int) -> None:
        """Return once an fsync of the log that began after commit ``number`` has succeeded;
        ``SyncFailed`` when the one that covered it failed."""
        with self._guard:  # which close() takes too: the counters stay mapped until we return
            self._counters()
            if self._covered(number):
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if self._covered(number):
                    return
                covered = self._read(_COMMITS)  # every commit numbered so far is in the log
                try:
                    self._sync_log()
                except OSError as exc:
                    self._write(_FAILED, max(covered, self._read(_FAILED)))
                    raise SyncFailed(exc.errno, f"the fsync of the SQLite log failed: {exc.strerror}") from None
                self._write(_SYNCED, max(covered, self._read(_SYNCED)))
                self._write(_SYNCS, self._read(_SYNCS) + 1)
                self.syncs += 1
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _covered(self, number: int) -> bool:
        # Failures first: a later sync covering the same numbers does not bring lost pages back.
        # (A commit synced just before a failure, whose writer had not looked yet, is failed
        # too: answered 503 though kept, it comes back as a duplicate; never the reverse.)
        if self._read(_FAILED) >= number:
            raise SyncFailed(0, "the fsync of the SQLite log that covered this commit failed")
        return self._read(_SYNCED) >= number

    def _sync_log(self) -> None:
        # Opened each time: a checkpoint may truncate the log and the last connection closed
        # may delete it; the open file is the one SQLite writes now. Without a log (a file
        # system where WAL could not be turned on), the commit went to the database itself.
        try:
            fd = os.open(self.log_path, os.O_RDONLY)
        except FileNotFoundError:
            fd = os.open(self.log_path[:-len("-wal")], os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unmap the counters, once no writer of this process is numbering a commit or syncing
        (a writer that comes later maps them again)."""
        with self._guard, self._mapping:
            if self._map is not None and self._pid == os.getpid():
                self._map.close()
                os.close(self._fd)
            self._map = self._fd = self._pid = None
