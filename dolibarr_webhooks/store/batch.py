"""Group commit of the ingest: the requests of one process waiting at the same time share one
transaction; on SQLite one writers' turn and one fsync too, on PostgreSQL one round trip and
one flush of the WAL (``PostgresCommitter``).

Without it each request took its own turn (a thread lock, ``flock`` on ``<database>.lock``),
its own ``BEGIN IMMEDIATE`` and ``COMMIT``, and wrote its own log frames for every index page
it touched, even when fifteen other threads were waiting behind it. Here a request puts its
prepared work in the committer's queue; the first of the waiting requests leads: it takes the
turn, then the work of every request waiting by then, those that came while it waited for the
turn too (up to ``MAX_COUNT`` requests and ``MAX_BYTES`` of payload), runs it in one
transaction, numbers the commit for ``SharedSync``, leaves the turn, hands the lead to the next
request waiting (which gathers the next batch while this one syncs), waits for the shared fsync
(with the other processes' writers, as before), then answers every request it covered.

The leader is a request's own thread, not a committer thread: a request alone leads itself at
once, without a hand-off between threads (two at least per request with a dedicated thread) or
a wait for company, so the c=1 path (and gunicorn's sync workers, one request at a time) stays
as short as before.

What each request is promised on SQLite stays what ``Store._write`` promised it alone
(``PostgresCommitter`` says how PostgreSQL keeps it):

- Its work runs after the work of the requests before it in the same transaction, so a
  duplicate search sees an event inserted earlier in the batch.
- Nothing is committed after the deadline of a request it covers: a request whose deadline
  passed is left out (``DeadlinePassed``) and the transaction is done again without it.
- Its own error (bad data...) fails it alone: the transaction is rolled back and done again
  without it, as if it had run on its own before the others.
- It is answered once the fsync that covers its commit has returned; a failed fsync fails
  exactly the requests of the commits it covered.
- Waiting for a lead ends at its deadline, unless its work is in a transaction already
  (then the leader answers it, as ``_write`` answered a request past its deadline mid-commit).
- It is answered by its own deadline, not its batch-mates': a lock is waited for until the
  batch's earliest deadline only; a request left out of the transaction (its deadline, its
  error) is answered at once; and a leader whose own outcome is known before the others'
  answers itself, the others going back to the head of the queue to lead themselves (the
  leader is a request's thread: it cannot answer while it works for the others).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from typing import Any, Callable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from .checkpoint import LogCheckpoints
from .engine import closed_by_server, refuses_writes
from .failures import TIMEOUT, DeadlinePassed, classify_error
from .group_commit import SharedSync
from .sqlite_fast import Drivers
from .writers import WriterQueue

# A burst does not build one huge transaction: the write lock is held for the statements of
# at most this many requests (serve has 16 threads a process), or this much payload.
MAX_COUNT = 32
MAX_BYTES = 4 * 1024 * 1024

_QUEUED, _TAKEN, _LEAD, _DONE = range(4)


class _Request:
    __slots__ = ("work", "deadline", "size", "state", "result", "error", "ready")

    def __init__(self, work: Any, deadline: float | None, size: int) -> None:
        self.work = work  # what the committer's _transaction runs: see SQLiteCommitter, PostgresCommitter
        self.deadline = deadline
        self.size = size
        self.state = _QUEUED
        self.result: Any = None
        self.error: BaseException | None = None
        # Released when the request is answered or must lead: a bare lock is the cheapest
        # thing a thread can sleep on (threading.Event adds a Condition).
        self.ready = threading.Lock()
        self.ready.acquire()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class Committer:
    """The group commit of one store's ingest in one process (see the module's docstring):
    the queue and its leaders. ``SQLiteCommitter`` and ``PostgresCommitter`` write a batch."""

    def __init__(self, engine: Engine, before_write: Callable[[], None],
                 after_durable: Callable[[list[Any]], None], durable: SharedSync | None = None,
                 max_count: int = MAX_COUNT, max_bytes: int = MAX_BYTES) -> None:
        self.engine = engine
        self.durable = durable
        self.before_write = before_write  # Store._reopen_if_stale
        self.after_durable = after_durable  # Store._woken: the workers' wake-up, once a transaction
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._guard = threading.Lock()
        self._queue: collections.deque[_Request] = collections.deque()
        self._leading = False
        # For tests and benchmarks: transactions committed, and the requests they covered (on
        # PostgreSQL, calls made one by one after an error in a batch count as one transaction).
        self.batches = 0
        self.committed = 0

    def run(self, work: Any, deadline: float | None = None, size: int = 0) -> Any:
        """``work``'s result once its transaction is committed and durable. ``work`` runs inside
        a write transaction shared with other requests; it must only execute statements (it
        may run more than once, when the transaction is done again without a request).
        ``size``: its bytes, counted against ``max_bytes``."""
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlinePassed("before the store was reached (the request waited in a queue)")
        request = _Request(work, deadline, size)
        with self._guard:
            self._queue.append(request)
            lead = not self._leading
            if lead:
                self._leading = True
        if not lead:
            lead = self._wait(request)
        if lead:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.result

    def _wait(self, request: _Request) -> bool:
        """Wait until answered (False) or made leader (True), giving up at the deadline while
        still only queued."""
        timeout = -1 if request.deadline is None else max(0.0, request.deadline - time.monotonic())
        if not request.ready.acquire(timeout=timeout):
            with self._guard:
                if request.state == _QUEUED:
                    self._queue.remove(request)
                    raise DeadlinePassed("waiting for this process's other writers")
            if request.state == _TAKEN:  # its work is in a transaction: the leader answers
                request.ready.acquire()
        return request.state == _LEAD

    def _lead(self) -> None:
        """Take the writers' turn, then the work of every request waiting by then (more come
        while the turn is waited for), commit it, hand the lead over, wait for the fsync."""
        with self._guard:
            leader = self._queue[0]
        batch, committed, number = [leader], False, None
        try:
            # Until the leader's deadline only: the requests behind it keep theirs (the next
            # leader waits again), and a request past its deadline is never written.
            with self._turn(leader.deadline):
                batch = self._take()  # answered with the error, should the commit raise
                batch, committed, number = self._commit(batch)
        except Exception as exc:  # the turn, BEGIN or COMMIT: not one request's fault
            with self._guard:
                if self._queue and self._queue[0] is leader:
                    self._queue.popleft()  # the turn did not come: the leader alone gives up
            batch = self._kept(batch, leader)
            for request in batch:
                if request.error is None:
                    request.error = exc
        finally:
            self._hand_over()  # whatever happened: the requests queued meanwhile need a leader
        if committed:
            self._after_commit()
        if number is not None:
            try:
                self.durable.wait_durable(number)
            except Exception as exc:  # SyncFailed: every request of the commit may be lost
                committed = False
                for request in batch:
                    if request.error is None:
                        request.error = exc
        for request in batch:
            if request.state != _DONE:  # not answered early (_answer_failed)
                request.state = _DONE
                if request is not leader:
                    request.ready.release()
        if committed:
            self.after_durable([request.result for request in batch if request.error is None])

    def _take(self) -> list[_Request]:
        """The requests waiting, in their order, up to the batch's bounds."""
        with self._guard:
            batch, size = [], 0
            while self._queue and len(batch) < self.max_count:
                if batch and size + self._queue[0].size > self.max_bytes:
                    break
                request = self._queue.popleft()
                request.state = _TAKEN
                size += request.size
                batch.append(request)
        return batch

    def _hand_over(self) -> None:
        with self._guard:
            if self._queue:
                successor = self._queue[0]
                successor.state = _LEAD
                successor.ready.release()
            else:
                self._leading = False

    def _turn(self, deadline: float | None):
        return contextlib.nullcontext()

    def _after_commit(self) -> None:
        """Out of the turn, right after a commit (before its fsync)."""

    def close(self) -> None:
        """What the committer holds between batches is let go (``Store.dispose``)."""

    def waiting(self) -> int:
        """Requests queued and not yet in a transaction (for tests)."""
        with self._guard:
            return len(self._queue)

    def _commit(self, batch: list[_Request]) -> tuple[list[_Request], bool, int | None]:
        """In the writers' turn (SQLite): write the batch's work in one transaction, each request's
        error on it. The requests this leader answers (the batch, less those that went back to
        the queue), whether anything was committed, and the commit's number for ``SharedSync``
        (None: no sync)."""
        leader, left = batch[0], self._drop_expired(batch)
        while leader in left:
            self._answer_failed(batch, leader)
            self.before_write()  # a try that met a file opened read-only closed the connections
            left = self._transaction(left, self._earliest(left))
            if not left:
                break
        else:
            # The leader's outcome is known (its deadline passed, its own error): it answers now,
            # and the requests left lead themselves.
            self._requeue(left)
        answered = self._kept(batch, leader)
        committed = sum(1 for request in answered if request.error is None)
        if not committed:
            return answered, False, None
        self.batches += 1
        self.committed += committed
        return answered, True, self.durable.committed() if self.durable else None

    def _transaction(self, requests: list[_Request], deadline: float | None) -> list[_Request]:
        """One try; the requests still to do: none when done (each request has its result, or
        its error); after a rollback, those without an error, to be tried again (a deadline
        passed, a request's own error). ``deadline``: the earliest of the requests', for any
        lock wait."""
        raise NotImplementedError

    @staticmethod
    def _earliest(requests: list[_Request]) -> float | None:
        deadlines = [request.deadline for request in requests if request.deadline is not None]
        return min(deadlines, default=None)

    @staticmethod
    def _kept(batch: list[_Request], leader: _Request) -> list[_Request]:
        """The requests of the batch this leader answers: not those that went back to the queue
        (their work is in no transaction)."""
        return [request for request in batch if request is leader or request.state != _QUEUED]

    @staticmethod
    def _answer_failed(batch: list[_Request], leader: _Request) -> None:
        """Answer now the requests of the batch that failed, and are out of its transaction
        (the leader answers itself when it is done leading)."""
        for request in batch:
            if request.error is not None and request is not leader and request.state == _TAKEN:
                request.state = _DONE
                request.ready.release()

    def _requeue(self, requests: list[_Request]) -> None:
        """Back to the head of the queue, in their order, out of this leader's answers: the next
        leader takes them first, and each stops waiting at its deadline again (its work is in
        no transaction). One whose deadline has passed waits for this leader's answer (its
        thread stopped looking at the time): it gets it now."""
        now = time.monotonic()
        with self._guard:
            for request in reversed(requests):
                if request.expired(now):
                    request.error = DeadlinePassed("waiting for this process's other writers")
                    request.state = _DONE
                    request.ready.release()
                else:
                    request.state = _QUEUED
                    request.result = None  # of a rolled-back try
                    self._queue.appendleft(request)

    @staticmethod
    def _unfailed(requests: list[_Request]) -> list[_Request]:
        return [request for request in requests if request.error is None]

    @staticmethod
    def _drop_expired(requests: list[_Request], when: str = "before the commit") -> list[_Request]:
        """The requests whose deadline has not passed; the others get ``DeadlinePassed``."""
        now = time.monotonic()
        left = []
        for request in requests:
            if request.expired(now):
                request.error = DeadlinePassed(f"the deadline passed {when}")
            else:
                left.append(request)
        return left


class SQLiteCommitter(Committer):
    """A batch is one ``BEGIN IMMEDIATE`` transaction in the file's writers' turn, on one of the
    store's driver connections (``sqlite_fast.Drivers``: no pool checkout or SQLAlchemy
    transaction is paid per batch); each request's work is ``work(driver)``, its statements
    on that connection."""

    def __init__(self, engine: Engine, writers: WriterQueue, durable: SharedSync | None,
                 before_write: Callable[[], None], after_durable: Callable[[list[Any]], None],
                 drivers: Drivers, checkpoints: LogCheckpoints | None = None, **bounds) -> None:
        super().__init__(engine, before_write, after_durable, durable, **bounds)
        self.writers = writers
        self.drivers = drivers
        self.checkpoints = checkpoints

    def _turn(self, deadline: float | None):
        return self.writers.turn(deadline)

    def _after_commit(self) -> None:
        if self.checkpoints is not None:
            self.checkpoints.committed()  # the log is copied by a thread, not in a writer's turn

    def _transaction(self, requests: list[_Request], deadline: float | None) -> list[_Request]:
        driver = self.drivers.take()
        try:
            try:
                driver.begin(deadline)
            except DBAPIError as exc:
                # Another program's write lock, until the earliest deadline (a busy timeout
                # counts whole seconds, so it may end sooner): those past theirs are left
                # out, the others wait again.
                if deadline is None or classify_error(exc) != TIMEOUT:
                    raise
                return self._drop_expired(requests, "waiting for another program's write lock")
            for request in requests:
                if request.expired(time.monotonic()):
                    request.error = DeadlinePassed("the deadline passed before its statements ran")
                    return self._unfailed(requests)
                try:
                    request.result = request.work(driver)
                except Exception as exc:
                    request.error = exc
                    return self._unfailed(requests)
            # Nothing is committed after the deadline of a request it covers.
            left = self._drop_expired(requests)
            if left != requests:
                return left
            driver.commit()
            return []
        finally:
            self.drivers.give_back(driver)

    def close(self) -> None:
        """The store is disposed of: close this process's connections (none in use by then)."""
        self.drivers.close()
        if self.checkpoints is not None:
            self.checkpoints.close()


class PostgresCommitter(Committer):
    """A batch of one is one call of the ingest function in autocommit, as before (one round
    trip), on the driver's connection. A batch of more is ``BEGIN``, the calls and ``COMMIT``
    sent together in psycopg's pipeline mode: one round trip and one flush of the WAL for all
    of them. Each call's lock waits end by the earliest deadline of the batch, so that the
    commit does not wait past it. On any error the transaction is rolled back and the leader
    called alone, with its own deadline, as before; the others go back to the queue, where the
    next leader batches them again (each failing request ends up alone, with its own error,
    and a lock wait cut short by another request's deadline is waited for again). Each
    request's work is ``(parameters of the call, finish)``: ``finish(the call's result)`` is
    the request's result."""

    def __init__(self, engine: Engine, statement, remaining_ms: Callable[[float | None], int],
                 before_write: Callable[[], None], after_durable: Callable[[list[Any]], None], **bounds) -> None:
        super().__init__(engine, before_write, after_durable, None, **bounds)
        self.statement = statement  # store.queue._INGEST_POSTGRES
        self.remaining_ms = remaining_ms  # Store._remaining_ms: DeadlinePassed when nothing is left
        self._sql = str(statement.compile(dialect=engine.dialect))  # psycopg's %(name)s form
        import psycopg  # with a PostgreSQL store only, as SQLAlchemy imports its driver

        self._driver_error = psycopg.Error
        self._pooled = None  # the connection this process's leaders use (_connection)
        self._pid: int | None = None

    def _transaction(self, requests: list[_Request], deadline: float | None) -> list[_Request]:
        if len(requests) == 1:
            self._call_alone(requests[0])
            return []
        remaining = []
        for request in requests:
            try:
                remaining.append(self.remaining_ms(request.deadline))
            except DeadlinePassed as exc:
                request.error = exc
        if len(remaining) < len(requests):
            return self._unfailed(requests)  # again without the requests whose deadline passed
        lock_timeout = f"{min(remaining)}ms"
        driver = self._connection()
        cursors = []
        try:
            with driver.pipeline():
                driver.execute("BEGIN")
                for request in requests:
                    cursors.append(driver.cursor().execute(self._sql, dict(request.work[0], lock_timeout=lock_timeout)))
                driver.execute("COMMIT")
        except self._driver_error as exc:
            if self._lost(driver, exc):  # the COMMIT's outcome unknown, or no write taken: never redo
                for request in requests:
                    request.error = self._wrapped(exc)
                return []
            driver.execute("ROLLBACK")
            # One of them failed the transaction: its own data, or a lock wait cut short by
            # the earliest deadline. The others go back to the queue first (those past their
            # deadline are answered now), then the first, the leader, is called alone with
            # its own deadline.
            self._requeue(requests[1:])
            self._call_alone(requests[0])
            return []
        except BaseException:
            self._drop()  # a transaction may be left open: never used again
            raise
        for request, cursor in zip(requests, cursors):
            request.result = request.work[1](cursor.fetchone()[0])
        return []

    def _call_alone(self, request: _Request) -> None:
        # On the driver's connection, as the batch: SQLAlchemy's execute cost the web process
        # more CPU than the call (0.40 against 0.25 ms a request, one thread, issue #15).
        parameters, finish = request.work
        try:
            lock_timeout = self.remaining_ms(request.deadline)
            driver = self._connection()
            try:
                found = driver.execute(self._sql, dict(parameters, lock_timeout=f"{lock_timeout}ms")).fetchone()[0]
            except self._driver_error as exc:
                self._lost(driver, exc)
                raise self._wrapped(exc) from exc
            request.result = finish(found)
        except Exception as exc:
            request.error = exc

    def _connection(self):
        """The committer's own connection of the request engine (autocommit, the deadline's
        timeouts), opened on first use in each process: one leader at a time uses it, so no
        pool checkout per batch. A connection the server closed meanwhile (a restart, a
        failover) is replaced before a request meets it, found by a look at its socket
        (``closed_by_server``), not by the pool's pre-ping and its round trip."""
        if self._pooled is not None and self._pid != os.getpid():
            self._pooled = None  # the parent's, after a fork: closing it would end the parent's session
        if self._pooled is not None:
            driver = self._pooled.driver_connection
            if driver.broken or driver.closed or closed_by_server(driver):
                self._drop()
        if self._pooled is None:
            try:
                self._pooled, self._pid = self.engine.raw_connection(), os.getpid()
            except self._driver_error as exc:  # the pool does not wrap a failed connect as a query's errors are
                raise self._wrapped(exc) from exc
            self._pooled.driver_connection.autocommit = True  # as the request engine's connections are
        return self._pooled.driver_connection

    def _drop(self) -> None:
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            pooled.invalidate()

    def close(self) -> None:
        if self._pooled is not None and self._pid == os.getpid():
            self._drop()
        self._pooled = None

    def _lost(self, driver, exc: Exception) -> bool:
        """True (and the connection dropped) when the driver lost the connection, as
        SQLAlchemy's own error handling does, or when its server takes no writes (a demoted
        primary: ``refuses_writes``)."""
        if driver.broken or driver.closed or refuses_writes(exc):
            self._drop()
            return True
        return False

    def _wrapped(self, exc: Exception) -> DBAPIError:
        """The driver's error as SQLAlchemy raises it (``IntegrityError``, ``OperationalError``...),
        so that ``failures.classify_error`` tells bad data from an outage or a timeout."""
        return DBAPIError.instance(self._sql, None, exc, self._driver_error, hide_parameters=True,
                                   dialect=self.engine.dialect)
