"""The worker: claims due deliveries, runs each plugin's handler with a timeout,
and records what happened (delivered, retry later, dead).

Each plugin has its own lane of ``WORKER_CONCURRENCY`` threads, so a plugin that
sleeps or fails only ever occupies its own lane. Runs as its own process
(``webhooks worker``) or as a thread inside each web process (``serve``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import PermanentFailure, RetryLater
from ..labels import encodable
from ..logs import request_id
from .notices import Notices
from ..plugins import Plugins
from ..store import DEAD, DELIVERED, FAILED, PENDING, STORE_ERRORS, Claim, Store, error_line
from .wakeup import CommitWatch, NotifyListener, Wakeup
from ..store.dashboard import HEARTBEAT_INTERVAL, beat, forget

logger = logging.getLogger(__name__)

# After a store operation failed, the worker tries again this soon.
RECONNECT_DELAY = 1.0
# While the store stays out of reach, the worker says so again this often (it tries every
# RECONNECT_DELAY): a database down for an hour was 3,600 error lines.
OUTAGE_REMINDER = 60.0
# The longest an idle worker waits before it looks whether it was asked to stop.
STOP_CHECK = 1.0


def retry_decision(attempts_done: int, error: BaseException, schedule: list[float], jitter: float,
                   now: float | None = None) -> tuple[str, float | None]:
    """``(status, next attempt time)`` after ``attempts_done`` failed attempts ending in ``error``."""
    now = time.time() if now is None else now
    if isinstance(error, PermanentFailure):
        return DEAD, None
    if attempts_done > len(schedule):
        return DEAD, None
    if isinstance(error, RetryLater) and error.after > 0:
        return FAILED, now + error.after
    delay = schedule[attempts_done - 1]
    delay *= 1 + random.uniform(-jitter, jitter)
    return FAILED, now + delay


def describe_failure(error: BaseException) -> str:
    """A handler's failure as kept with its attempt, logged and told to the alerting plugins:
    the exception's whole text, which is the plugin's account of what went wrong (store errors
    use ``store.error_line``). Always encodable: a message quoting a forged body's field may
    hold a lone surrogate."""
    text = str(error) or type(error).__name__
    return encodable(f"{type(error).__name__}: {text}"[:2000])


class Lasting:
    """A condition that lasts (the store out of reach, heartbeats not recorded) and that the
    worker meets at each try: said when it begins, then every OUTAGE_REMINDER while it lasts."""

    def __init__(self) -> None:
        self.since: float | None = None
        self._said_at = 0.0

    def to_say(self) -> float | None:
        """Met again: how long it has lasted when that is to be said now (0.0 as it begins),
        else None."""
        now = time.monotonic()
        if self.since is None:
            self.since = self._said_at = now
            return 0.0
        if now - self._said_at >= OUTAGE_REMINDER:
            self._said_at = now
            return now - self.since
        return None

    def end(self) -> float | None:
        """Over: how long it lasted, or None when it was not on."""
        since, self.since = self.since, None
        return None if since is None else time.monotonic() - since


@dataclass
class Running:
    claim: Claim
    deadline: float
    recording: bool = False  # the handler returned; its outcome is being written


@dataclass
class Worker:
    store: Store
    plugins: Plugins
    settings: Any
    metrics: Any = None
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Seconds an idle worker woken by a commit waits before it looks, then once for all the
    # commits meanwhile: another process's commit, its own process's (0: it looks at once).
    after_others: float = 0.0
    after_own: float = 0.0
    # The store is the worker's own (Service.delivery_worker): disposed of once it stops.
    owns_store: bool = False

    def __post_init__(self) -> None:
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self._committed_here = threading.Event()  # since the last look: see committed()
        self._running: dict[int, Running] = {}
        self._abandoned: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_purge = self._last_fold = 0.0
        self._last_beat = 0.0
        self._more_due = False  # the last claim got all it asked for: more may be due
        self._outage = Lasting()  # the store out of reach
        self._beats_lost = Lasting()  # heartbeats not recorded
        self.started_at = time.time()
        self.store.add_listener(self.committed)
        self.notices = Notices(self.plugins, self.settings, self.metrics)

    def committed(self) -> None:
        """A store's listener: a commit of this process added deliveries. Wakes the idle worker
        at once (before the commit's wake file or NOTIFY, which wake the other processes')."""
        self._committed_here.set()
        self.wake_event.set()

    # -- one lane -----------------------------------------------------------------
    def _execute(self, claim: Claim | None) -> None:
        """Runs in the plugin's lane thread: deliver, then go on with the next due delivery of the
        plugin that the outcome's transaction claimed, until none is."""
        try:
            while claim is not None:
                token = request_id.set(claim.event.id)  # every line about this delivery names its event
                try:
                    claim = self._deliver(claim)
                finally:
                    request_id.reset(token)
        finally:
            self.wake_event.set()  # the lane is free

    def _deliver(self, claim: Claim) -> Claim | None:
        """Call the handler and record the outcome; the lane's next claim, or None."""
        try:
            self.plugins.handle(claim.plugin, claim.event)
        except BaseException as error:  # every failure is recorded and retried, never swallowed
            status, next_at = retry_decision(claim.attempts + 1, error, self.settings["RETRY_SCHEDULE"],
                                             self.settings["RETRY_JITTER"])
            log = logger.error if status == DEAD else logger.warning
            log("%s on %s %s failed (attempt %d): %s; %s", claim.plugin, claim.event.trigger_code, claim.event.id,
                claim.attempts + 1, describe_failure(error),
                "dead" if status == DEAD else f"retry in {next_at - time.time():.0f}s")
            return self._record(claim, status, describe_failure(error), next_at)
        return self._record(claim, DELIVERED, None, None)

    def _record(self, claim: Claim, status: str, error: str | None, next_at: float | None) -> Claim | None:
        """Record a handler's outcome; the lane's next claim, taken in the same transaction
        while the lane is still this run's and the worker is not stopping (else None)."""
        with self._lock:
            running = self._running.get(claim.delivery_id)
            mine = running is not None and running.claim.token == claim.token
            if mine:
                running.recording = True  # no timeout now, but the lane stays taken until recorded
            else:  # the timeout already recorded this run; it came back late (maybe while its retry runs)
                self._abandoned[claim.plugin] = max(0, self._abandoned.get(claim.plugin, 1) - 1)
        held, following = None, None
        try:
            held, following = self._write_outcome(claim, status, error, next_at, claim_next=mine)
        finally:
            if mine:
                following = self._take_over(claim, following)
        if held is not None:
            self._finished(claim, status, error, held)
        return following

    def _write_outcome(self, claim: Claim, status: str, error: str | None, next_at: float | None,
                       claim_next: bool) -> tuple[bool | None, Claim | None]:
        """``(held, the lane's next claim)`` once the outcome is written. While the store cannot
        take it (a full disk, a restart), again every RECONNECT_DELAY until the lease ends: the
        work is done, and an outcome lost ran the delivery again after its lease. ``(None,
        None)`` when the lease ended first."""
        lease_end = claim.started_at + self.settings["LEASE"]
        waited = False
        while True:
            try:
                if claim_next and not self.stop_event.is_set():
                    return self.store.finish_and_claim(claim, status, error, next_at, self.name,
                                                       self.settings["LEASE"])
                return self.store.finish(claim, status, error, next_at, self.name), None
            except STORE_ERRORS as exc:
                if time.time() + RECONNECT_DELAY >= lease_end:
                    logger.error("%s on event %s: its outcome (%s) was not recorded before its lease ended: the "
                                 "store is unavailable (%s); it will run again", claim.plugin, claim.event.id,
                                 status, error_line(exc))
                    return None, None
                if not waited:
                    waited = True
                    logger.warning("%s on event %s: the store is unavailable (%s); its outcome (%s) is kept and "
                                   "written again every %gs", claim.plugin, claim.event.id, error_line(exc), status,
                                   RECONNECT_DELAY)
            time.sleep(RECONNECT_DELAY)

    def _take_over(self, done: Claim, following: Claim | None) -> Claim | None:
        """The lane passes from ``done`` to ``following`` (its timeout counting from now); a
        claim taken while the worker began to stop is handed back instead."""
        with self._lock:
            self._running.pop(done.delivery_id, None)
            if following is None:
                return None
            if not self.stop_event.is_set():
                deadline = time.time() + self.settings["HANDLER_TIMEOUT"]
                self._running[following.delivery_id] = Running(following, deadline)
                threading.current_thread().name = f"dolibarr-webhooks:{following.plugin}:{following.delivery_id}"
                return following
            # Busy until handed back, so the shutdown waits for this write: it went on, closed the
            # store and let the process exit under it (the delivery then waited out its lease).
            # As a recording lane's, neither timed out nor handed back again by the shutdown.
            self._running[following.delivery_id] = Running(following, time.time(), recording=True)
        try:
            self._release(following)
        finally:
            with self._lock:
                self._running.pop(following.delivery_id, None)
        return None

    def _finished(self, claim: Claim, status: str, error: str | None, held: bool) -> None:
        """What follows a handler's recorded outcome: the notices, the metrics."""
        if not held:
            logger.info("%s on event %s finished after losing its lease", claim.plugin, claim.event.id)
        else:
            self.notices.finished(claim.plugin, claim.event, status, claim.attempts + 1, error)
        if self.metrics is not None:
            self.metrics.delivery_finished(claim.plugin, status, time.time() - claim.started_at)

    def _release(self, claim: Claim) -> None:
        """Hand a claimed delivery back, due at once, without counting an attempt (the worker stops)."""
        self.store.finish(claim, FAILED if claim.attempts else PENDING, "released at shutdown",
                          time.time(), self.name, outcome="released", count_attempt=False)
        logger.warning("released %s delivery of event %s at shutdown", claim.plugin, claim.event.id)

    # -- the loop -----------------------------------------------------------------
    def lanes(self) -> dict[str, int]:
        concurrency = self.settings["WORKER_CONCURRENCY"] or 1
        with self._lock:
            busy: dict[str, int] = {}
            for running in self._running.values():
                busy[running.claim.plugin] = busy.get(running.claim.plugin, 0) + 1
            # Abandoned (timed-out) threads still hold a slot, so a hung plugin cannot pile up threads.
            return {p: concurrency - busy.get(p, 0) - self._abandoned.get(p, 0) for p in self.plugins.handlers()}

    def run_once(self) -> int:
        """Claim what is due and start it; returns how many deliveries were started."""
        lanes = {p: n for p, n in self.lanes().items() if n > 0}
        if not lanes:
            return 0
        # has_due keeps an idle worker from taking the write lock; while a backlog drains, a claim
        # that got all it asked for says the next will find work, so the look is skipped.
        due = self._more_due or self.store.has_due(lanes)
        claims = self.store.claim(lanes, self.name, self.settings["LEASE"]) if due else []
        self._store_back()  # it answered
        if not claims:
            self._more_due = False
            return 0
        self._more_due = len(claims) == sum(lanes.values())
        timeout = self.settings["HANDLER_TIMEOUT"]
        for claim in claims:
            thread = threading.Thread(target=self._execute, args=(claim,), daemon=True,
                                      name=f"dolibarr-webhooks:{claim.plugin}:{claim.delivery_id}")
            with self._lock:
                self._running[claim.delivery_id] = Running(claim, time.time() + timeout)
            thread.start()
        return len(claims)

    def _expire(self) -> None:
        now = time.time()
        with self._lock:
            expired = [r for r in self._running.values() if r.deadline <= now and not r.recording]
            for running in expired:
                del self._running[running.claim.delivery_id]
                self._abandoned[running.claim.plugin] = self._abandoned.get(running.claim.plugin, 0) + 1
        for running in expired:
            claim = running.claim
            error = TimeoutError(f"handler took longer than {self.settings['HANDLER_TIMEOUT']:g}s")
            status, next_at = retry_decision(claim.attempts + 1, error, self.settings["RETRY_SCHEDULE"],
                                             self.settings["RETRY_JITTER"])
            logger.warning("%s on %s %s timed out; %s", claim.plugin, claim.event.trigger_code, claim.event.id,
                           "dead" if status == DEAD else "will retry")
            if self.store.finish(claim, status, describe_failure(error), next_at, self.name, outcome="timeout"):
                self.notices.finished(claim.plugin, claim.event, status, claim.attempts + 1, describe_failure(error))
            if self.metrics is not None:
                self.metrics.delivery_finished(claim.plugin, "timeout", time.time() - claim.started_at)

    def busy(self) -> int:
        with self._lock:
            return len(self._running)

    def run(self, stop_after_idle: float | None = None) -> None:
        """Loop until ``stop()``; with ``stop_after_idle``, also stop once nothing was due for that long."""
        logger.info("worker %s started: plugins %s", self.name, ", ".join(self.plugins.handlers()) or "none")
        # PostgreSQL: LISTEN, (re)connected in the loop. SQLite: a watch on the store's wake
        # file, or None where inotify is missing (then the worker looks every POLL_INTERVAL).
        listener: Wakeup | None = None if self.store.is_postgres else CommitWatch.open(self.store)
        idle_since = time.time()
        try:
            while not self.stop_event.is_set():
                try:
                    if self.store.is_postgres and listener is None:
                        listener = NotifyListener(self.store)
                    self._maybe_beat()
                    self._expire()
                    self.notices.tick()
                    started = self.run_once()
                    self._housekeeping()
                    if started or self.busy():
                        idle_since = time.time()
                    elif stop_after_idle is not None and time.time() - idle_since >= stop_after_idle:
                        break
                    if started:
                        continue
                    self._wait(listener)
                except STORE_ERRORS as exc:
                    self._store_down(exc)
                    if self.store.is_postgres and listener is not None:
                        listener.close()
                        listener = None
                    self.stop_event.wait(RECONNECT_DELAY)
        finally:
            if listener:
                listener.close()
            self._shutdown()

    def _store_down(self, exc: BaseException) -> None:
        lasted = self._outage.to_say()
        if lasted == 0.0:
            logger.error("worker %s: the store is unavailable (%s); trying again every %gs", self.name,
                         error_line(exc), RECONNECT_DELAY)
        elif lasted is not None:
            logger.error("worker %s: the store is still unavailable after %.0fs (%s)", self.name, lasted,
                         error_line(exc))

    def _store_back(self) -> None:
        lasted = self._outage.end()
        if lasted is not None:
            logger.info("worker %s: the store is back after %.1fs", self.name, lasted)

    def _wait(self, listener: Wakeup | None) -> None:
        poll = self.settings["POLL_INTERVAL"]
        if listener is not None and not self.busy():
            # Idle: a NOTIFY (PostgreSQL) or a commit (SQLite) wakes us at once for new deliveries
            # and replays; a retry coming due sends none, so sleep no longer than until the next one.
            timeout = max(poll, 1.0)
            retry_at = self.store.next_retry_at(self.lanes())
            if retry_at is not None:
                timeout = min(timeout, max(0.0, retry_at - time.time()))
            # stop() is seen within STOP_CHECK, whatever POLL_INTERVAL: a signal does not end
            # the wait in select() (Python resumes it), and systemd would kill a worker that
            # took a minute to stop.
            woken = listener.wait(timeout, self.wake_event, step=min(poll, STOP_CHECK))
            # A wake-up (the wake file, a NOTIFY) without a commit of this process is another
            # process's commit; wake_event alone is a handler done, or stop(): no wait.
            gather = self.after_own if self._committed_here.is_set() else self.after_others if woken else 0.0
            if gather:
                self.stop_event.wait(gather)
                listener.drain()
        else:
            # Handlers running: the first to finish wakes us (a NOTIFY waits, queued, for the next wait).
            self.wake_event.wait(poll)
        self.wake_event.clear()
        self._committed_here.clear()  # the look that follows takes what it added

    def stop(self) -> None:
        self.stop_event.set()
        self.wake_event.set()

    def _shutdown(self) -> None:
        """Give running handlers the grace period, then hand their deliveries back."""
        deadline = time.time() + self.settings["SHUTDOWN_GRACE"]
        while self.busy() and time.time() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = [r for r in self._running.values() if not r.recording]
            for running in left:
                del self._running[running.claim.delivery_id]
        for running in left:
            self._release(running.claim)
        self.notices.close()
        with contextlib.suppress(*STORE_ERRORS):  # a store that is down shows the worker silent, then gone
            forget(self.store, self.name)
        if self.owns_store:
            self.store.dispose()
        logger.info("worker %s stopped", self.name)

    def _maybe_beat(self) -> None:
        """The dashboard tells a live worker from a gone one by this row's age. A heartbeat
        that cannot be written (a store not migrated to version 6) never stops deliveries."""
        now = time.time()
        if now - self._last_beat < HEARTBEAT_INTERVAL:
            return
        self._last_beat = now
        try:
            beat(self.store, self.name, self.started_at, self.plugins.handlers())
        except STORE_ERRORS as exc:
            # A full disk fails each beat: said as the store's outage is, and not at all while
            # that outage is said (360 warnings an hour were).
            lasted = self._beats_lost.to_say() if self._outage.since is None else None
            if lasted is not None:
                logger.warning("worker %s: could not record its heartbeat%s: %s", self.name,
                               f" for {lasted:.0f}s" if lasted else "", error_line(exc))
        else:
            lasted = self._beats_lost.end()
            if lasted is not None:
                logger.info("worker %s: its heartbeat is recorded again after %.1fs", self.name, lasted)

    def _housekeeping(self) -> None:
        """The events retention lets go purged every ten minutes; PostgreSQL's events folded
        into the tallies behind ``stats`` every minute (``Store.fold_events``), so that it
        counts a few minutes of events one by one, not the whole store."""
        now = time.time()
        if now - self._last_purge >= 600:
            self._last_purge = now
            purged = self.store.purge(self.settings["RETENTION"])
            if purged:
                logger.info("purged %d delivered events older than %gs", purged, self.settings["RETENTION"])
        if now - self._last_fold >= 60:
            self._last_fold = now
            self.store.fold_events()


# serve's web processes each run a worker, beside the threads answering Dolibarr. Woken at
# once by every commit, the workers of the three processes that had not committed looked and
# raced for each new delivery; then the committing process's worker delivered at once, event
# by event, taking its process's GIL while its thread answered the next request: at c=1, p50
# 2.8 ms against 1.3 without the workers (issue #15). Now an embedded worker woken by a commit
# looks once the commits of the next moment have come too, and claims them together: after
# AFTER_OTHERS when another process committed, after AFTER_OWN when its own did. Its own waits
# longer: the process that answered last is the one that answers next (its thread keeps the
# connection), so, while another process is idle, that one delivers. Shorter waits meant
# smaller batches and more CPU for each delivery (bench/HISTORY.rst).
AFTER_OTHERS = 0.1
AFTER_OWN = 0.2


def start_embedded(worker: Worker) -> threading.Thread:
    """Run a worker in a daemon thread of this (web) process, stopped at interpreter exit.
    It looks ``AFTER_OTHERS`` after another process's commit, ``AFTER_OWN`` after its own's."""
    import atexit

    worker.after_others, worker.after_own = AFTER_OTHERS, AFTER_OWN

    thread = threading.Thread(target=worker.run, name="dolibarr-webhooks-worker", daemon=True)
    thread.start()

    def stop() -> None:
        worker.stop()
        thread.join(worker.settings["SHUTDOWN_GRACE"] + 5)

    atexit.register(stop)
    return thread
