"""Checkpoints of an SQLite store's write-ahead log, copied into the database file by a thread
of each process, out of the writers' turn.

SQLite copies the log into the database file (a checkpoint) inside the COMMIT that takes the
log past 1,000 pages: about 4 MB written and two fsyncs, 7 to 25 ms on the benchmark machine,
while that writer holds the write lock and every other writer of the file waits. With each
event taking some 24 pages, that was one request in 40 waiting that long, and everyone
queued behind it (bench/HISTORY.rst, issue #15).

Here, after each commit of the ingest, the committer reads how many pages of the log are not
copied yet (``uncopied``: two counters of the log's index, the ``-shm`` file); past
``PAGES`` it wakes this process's checkpoint thread, which copies them with a PASSIVE
checkpoint: concurrently with the writers, which go on committing. The checkpoint SQLite
still runs at 1,000 pages finds little left to copy; it is the one that lets the next writer
start the log again from its beginning, so the log stays as small as before. A checkpoint
syncs the log before copying and the database file after (``synchronous`` NORMAL or FULL),
as SQLite's own does: nothing acknowledged depends on it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading

logger = logging.getLogger(__name__)

# A quarter of SQLite's automatic checkpoint (1,000 pages): copied often enough that the one
# in the COMMIT has little left, seldom enough that the database file is not synced per event.
PAGES = 256
# A thread with nothing to copy for this long closes its connection and ends (a store that is
# never disposed of does not keep it); the next commit that needs one starts another.
IDLE_SECONDS = 60.0

# The log's index (https://www.sqlite.org/walformat.html, "The WAL-Index Header"), in native
# byte order: mxFrame, the last frame of the log, at byte 16; nBackfill, the frames already
# copied into the database file, at byte 96.
_U32 = struct.Struct("@I")
_LAST_FRAME, _BACKFILLED = 16, 96


class LogCheckpoints:
    """The checkpoints of one SQLite file's log, run by a thread of this process."""

    def __init__(self, database_path: str, synchronous: str = "NORMAL", pages: int = PAGES) -> None:
        self.database_path = database_path
        self.index_path = database_path + "-shm"
        self.synchronous = synchronous.upper()
        self.pages = pages
        self._guard = threading.Lock()
        # The running thread and the event that wakes it; a thread that is no longer
        # ``_thread`` (closed, or a fork's parent's) ends at its next wake.
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._pid: int | None = None
        self._index_fd: int | None = None
        self.runs = 0  # checkpoints this process ran (for tests and benchmarks)

    def committed(self) -> None:
        """After a commit, out of the writers' turn: wake the thread when the log holds
        ``pages`` pages not yet copied."""
        if self.uncopied() >= self.pages:
            self._start().set()

    def uncopied(self) -> int:
        """Pages of the log not yet copied into the database file (0 when it cannot be told:
        no log, or the log's index could not be read)."""
        fd = self._index()
        if fd is None:
            return 0
        try:
            header = os.pread(fd, _BACKFILLED + 4, 0)
        except OSError:
            return 0
        if len(header) < _BACKFILLED + 4:
            return 0
        return max(0, _U32.unpack_from(header, _LAST_FRAME)[0] - _U32.unpack_from(header, _BACKFILLED)[0])

    def _index(self) -> int | None:
        """This process's descriptor of the log's index; opened again when the file was
        removed (SQLite removes it when the last connection to the database closes)."""
        if self._pid != os.getpid():  # after a fork: the parent's thread and descriptor are not ours
            self._pid, self._index_fd, self._thread = os.getpid(), None, None
        if self._index_fd is not None:
            try:
                if os.fstat(self._index_fd).st_nlink:
                    return self._index_fd
            except OSError:
                pass
            self._close_index()
        try:
            self._index_fd = os.open(self.index_path, os.O_RDONLY)
        except OSError:
            return None
        return self._index_fd

    def _close_index(self) -> None:
        fd, self._index_fd = self._index_fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _start(self) -> threading.Event:
        """The running thread's wake-up, a thread started first if none runs."""
        with self._guard:
            if self._thread is None or not self._thread.is_alive():
                self._wake = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._wake,), daemon=True,
                                                name="dolibarr-webhooks-checkpoints")
                self._thread.start()
            return self._wake

    def _run(self, wake: threading.Event) -> None:
        connection = None
        try:
            while wake.wait(IDLE_SECONDS) and self._thread is threading.current_thread():
                wake.clear()
                try:
                    if connection is None:
                        connection = sqlite3.connect(self.database_path, isolation_level=None,
                                                     check_same_thread=False)
                        connection.execute(f"PRAGMA synchronous={self.synchronous}")
                    # PASSIVE: never waits for a lock; what a reader still uses is copied next time.
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error as exc:  # SQLite's own checkpoint at 1,000 pages still bounds the log
                    logger.debug("checkpoint of %s not run: %s", self.database_path, exc)
                    if connection is not None:
                        connection.close()
                        connection = None
        finally:
            if connection is not None:
                connection.close()
            with self._guard:
                if self._thread is threading.current_thread():
                    self._thread = None

    def close(self) -> None:
        """The store is disposed of: the thread ends and lets go of its connection (a later
        commit starts another)."""
        with self._guard:
            self._thread = None
            self._wake.set()
        if self._pid == os.getpid():
            self._close_index()
