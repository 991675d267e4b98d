"""What plugins hear about deliveries: each outcome (``delivery_outcome``) and, bounded, the
failures a person must know about (``alert``).

The worker reports every delivery it finishes here. Outcomes go to the plugins that listen
for other plugins' deliveries (the Dolibarr write-back records them on the object's card);
dead deliveries and recoveries become alerts, at most one per failing plugin per
``ALERT_INTERVAL``, the dead ones after it grouped into one digest, so that an outage of a
remote system sends one message and then one digest, not one message per event.

Each listening plugin has its own thread and queue, like a delivery lane: a slow or failing
alert channel never delays the worker or another plugin. A call that raises is retried a few
times, then logged as lost and counted (``notices_lost`` in the metrics).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ..events import Event

logger = logging.getLogger(__name__)

DELIVERED, DEAD, RECOVERED, DIGEST = "delivered", "dead", "recovered", "digest"
# Seconds between the attempts of one notice; after the last, it is lost (and logged).
NOTICE_RETRIES = (1.0, 10.0, 60.0)


def replay_command(plugin: str, event_id: str | None = None) -> str:
    """The command that replays a plugin's dead deliveries (one event's, or all)."""
    if event_id:
        return f"dolibarr-webhooks replay {event_id} --plugin {plugin}"
    return f"dolibarr-webhooks replay --dead --plugin {plugin}"


@dataclass(frozen=True)
class Outcome:
    """How one delivery ended: ``delivered``, ``dead``, or ``recovered`` (delivered after its
    plugin's last deliveries went dead)."""

    kind: str
    plugin: str
    event: Event
    attempts: int
    error: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    dashboard_url: str | None = None  # the event's page on the dashboard, when it is served

    @property
    def replay_command(self) -> str:
        return replay_command(self.plugin, self.event.id)


@dataclass(frozen=True)
class Alert:
    """A message for a person: ``dead`` (the first dead delivery of a plugin in an interval),
    ``digest`` (the dead ones the interval held back) or ``recovered`` (the plugin delivers
    again; ``dead`` then lists those not yet reported)."""

    kind: str
    plugin: str
    dead: tuple[Outcome, ...] = ()
    recovered: Outcome | None = None
    interval: float = 0.0

    @property
    def last_error(self) -> str | None:
        return self.dead[-1].error if self.dead else None

    @property
    def replay_command(self) -> str:
        if self.kind == DEAD and len(self.dead) == 1:
            return self.dead[0].replay_command
        return replay_command(self.plugin)

    @property
    def dashboard_url(self) -> str | None:
        return self.dead[-1].dashboard_url if self.dead else None

    @property
    def title(self) -> str:
        if self.kind == RECOVERED:
            return f"dolibarr-webhooks: {self.plugin} delivers again"
        if self.kind == DIGEST:
            return (f"dolibarr-webhooks: {len(self.dead)} more {self.plugin} deliveries dead "
                    f"in the last {_duration(self.interval)}")
        return f"dolibarr-webhooks: {self.plugin} delivery dead"

    def lines(self, describe: Callable[[Event], str] = lambda event: event.label or event.id) -> list[str]:
        """The alert in plain English, one fact a line; ``describe`` words an event."""
        lines: list[str] = []
        if self.recovered is not None:
            lines.append(f"{self.plugin} delivered {describe(self.recovered.event)} "
                         f"({self.recovered.event.trigger_code}) after failures.")
        for outcome in self.dead[:20]:
            lines.append(f"Dead after {outcome.attempts} attempt{'s' * (outcome.attempts != 1)}: "
                         f"{describe(outcome.event)} ({outcome.event.trigger_code}, event {outcome.event.id}): "
                         f"{outcome.error or 'no error recorded'}")
        if len(self.dead) > 20:
            lines.append(f"... and {len(self.dead) - 20} more.")
        if self.dead:
            lines.append(f"Replay: {self.replay_command}")
            if self.dashboard_url:
                lines.append(f"Dashboard: {self.dashboard_url}")
        return lines


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


class AlertThrottle:
    """At most one alert per failing plugin per interval; what the interval holds back goes
    out as one digest when it ends (or with the recovery, if that comes first)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last_sent: dict[str, float] = {}
        self._held: dict[str, list[Outcome]] = {}

    def dead(self, outcome: Outcome) -> Alert | None:
        now = self.clock()
        last = self._last_sent.get(outcome.plugin)
        if last is not None and now - last < self.interval:
            self._held.setdefault(outcome.plugin, []).append(outcome)
            return None
        held = self._held.pop(outcome.plugin, [])
        self._last_sent[outcome.plugin] = now
        if held:
            return Alert(DIGEST, outcome.plugin, dead=(*held, outcome), interval=self.interval)
        return Alert(DEAD, outcome.plugin, dead=(outcome,), interval=self.interval)

    def recovered(self, outcome: Outcome) -> Alert:
        held = self._held.pop(outcome.plugin, [])
        self._last_sent.pop(outcome.plugin, None)  # the next failure is news again
        return Alert(RECOVERED, outcome.plugin, dead=tuple(held), recovered=outcome, interval=self.interval)

    def due(self) -> list[Alert]:
        """The digests whose interval has ended."""
        now = self.clock()
        alerts = []
        for plugin, held in list(self._held.items()):
            if held and now - self._last_sent.get(plugin, 0.0) >= self.interval:
                del self._held[plugin]
                self._last_sent[plugin] = now
                alerts.append(Alert(DIGEST, plugin, dead=tuple(held), interval=self.interval))
        return alerts


class Notices:
    """Turns finished deliveries into outcomes and alerts, and hands them to the plugins that
    implement ``delivery_outcome`` or ``alert``, each plugin in its own thread."""

    def __init__(self, plugins: Any, settings: Any, metrics: Any = None,
                 retries: tuple[float, ...] = NOTICE_RETRIES) -> None:
        self.plugins = plugins
        self.metrics = metrics
        self.retries = retries
        self.throttle = AlertThrottle(settings["ALERT_INTERVAL"])
        self.dashboard = _dashboard_root(settings)
        self.listeners = {hook: plugins.implementing(hook) for hook in ("delivery_outcome", "alert")}
        self._failing: dict[str, int] = {}  # plugin -> deliveries dead since its last success
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}

    @property
    def active(self) -> bool:
        return any(self.listeners.values())

    def finished(self, plugin: str, event: Event, status: str, attempts: int, error: str | None) -> None:
        """Called by the worker once a delivery's outcome is recorded."""
        if status not in (DELIVERED, DEAD) or not self.active:
            return
        url = f"{self.dashboard}/events/{event.id}" if self.dashboard else None
        with self._lock:
            if status == DEAD:
                self._failing[plugin] = self._failing.get(plugin, 0) + 1
                outcome = Outcome(DEAD, plugin, event, attempts, error, dashboard_url=url)
                alert = self.throttle.dead(outcome)
            else:
                recovered = self._failing.pop(plugin, 0) > 0
                outcome = Outcome(RECOVERED if recovered else DELIVERED, plugin, event, attempts,
                                  dashboard_url=url)
                alert = self.throttle.recovered(outcome) if recovered else None
        for listener in self.listeners["delivery_outcome"]:
            if listener != plugin:  # a plugin hears about the others' deliveries, not its own
                self._send(listener, "delivery_outcome", outcome=outcome)
        if alert is not None:
            self._alert(alert)

    def tick(self) -> None:
        """Send the digests that are due; the worker calls this from its loop."""
        if not self.listeners["alert"]:
            return
        with self._lock:
            due = self.throttle.due()
        for alert in due:
            self._alert(alert)

    def _alert(self, alert: Alert) -> None:
        for listener in self.listeners["alert"]:
            self._send(listener, "alert", alert=alert)

    def _send(self, plugin: str, hook: str, **kwargs: Any) -> None:
        with self._lock:
            lane = self._lanes.get(plugin)
            if lane is None:
                lane = self._lanes[plugin] = _Lane(self, plugin)
        lane.put(hook, kwargs)

    def close(self, timeout: float = 5.0) -> None:
        """Let the lanes finish what they hold, for up to ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        for lane in list(self._lanes.values()):
            lane.close(max(0.0, deadline - time.monotonic()))


class _Lane:
    def __init__(self, notices: Notices, plugin: str) -> None:
        self.notices, self.plugin = notices, plugin
        self.queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"dolibarr-webhooks:notices:{plugin}")
        self.thread.start()

    def put(self, hook: str, kwargs: dict[str, Any]) -> None:
        self.queue.put((hook, kwargs))

    def close(self, timeout: float) -> None:
        self.queue.put(None)
        self.thread.join(timeout)
        self.stopping.set()  # what is still waiting to be retried gives up

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            hook, kwargs = item
            for attempt, delay in enumerate((*self.notices.retries, None), start=1):
                try:
                    self.notices.plugins.call_with_settings(hook, self.plugin, **kwargs)
                    break
                except Exception as exc:  # noqa: BLE001 - one plugin's failure stays in its lane
                    if delay is None or self.stopping.is_set():
                        logger.error("%s: %s lost after %d attempts: %s: %s", self.plugin, hook, attempt,
                                     type(exc).__name__, exc)
                        if self.notices.metrics is not None:
                            self.notices.metrics.notice_lost(self.plugin, hook)
                        break
                    logger.warning("%s: %s failed (attempt %d), retrying in %gs: %s: %s", self.plugin, hook,
                                   attempt, delay, type(exc).__name__, exc)
                    self.stopping.wait(delay)


def _dashboard_root(settings: Any) -> str | None:
    """The dashboard's address for links in alerts: only when it is served and the public URL is known."""
    public = settings["PUBLIC_URL"]
    return f"{public.rstrip('/')}/admin" if settings["ADMIN_PASSWORD"] and public else None
