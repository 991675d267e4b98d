"""Plugins hear about deliveries: each outcome, and bounded alerts with a digest; and a
plugin's settings are read once."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from dolibarr_webhooks import PermanentFailure, create_app, hookimpl
from dolibarr_webhooks.pipeline.notices import AlertThrottle, Outcome
from dolibarr_webhooks.pluginkit import Event
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET
from dolibarr_webhooks_testplugin import body


def dead(plugin: str, n: int) -> Outcome:
    event = Event(id=f"e{n}", trigger_code="BILL_VALIDATE", object={}, label=f"FA{n}")
    return Outcome("dead", plugin, event, attempts=5, error=f"boom {n}", at=datetime.now(timezone.utc))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_alert_per_plugin_per_interval_and_the_rest_in_one_digest():
    clock = Clock()
    throttle = AlertThrottle(interval=600, clock=clock)
    first = throttle.dead(dead("slack", 0))
    assert first.kind == "dead" and [o.event.id for o in first.dead] == ["e0"]
    assert "Replay: dolibarr-webhooks replay e0 --plugin slack" in first.lines()
    assert all(throttle.dead(dead("slack", n)) is None for n in range(1, 40))
    assert throttle.dead(dead("email", 0)).kind == "dead"  # another plugin's failure is news
    clock.now += 599
    assert throttle.due() == []
    clock.now += 1
    (digest,) = throttle.due()
    assert digest.kind == "digest" and len(digest.dead) == 39 and digest.last_error == "boom 39"
    assert digest.title == "dolibarr-webhooks: 39 more slack deliveries dead in the last 10 min"
    assert "Replay: dolibarr-webhooks replay --dead --plugin slack" in digest.lines()
    assert "... and 19 more." in digest.lines()
    assert throttle.due() == []
    assert throttle.dead(dead("slack", 40)) is None  # the digest started a new interval


def test_recovery_carries_what_was_held_and_makes_the_next_failure_news():
    clock = Clock()
    throttle = AlertThrottle(interval=600, clock=clock)
    throttle.dead(dead("sync", 0))
    throttle.dead(dead("sync", 1))
    ok = Outcome("recovered", "sync", Event(id="e9", trigger_code="BILL_PAYED", object={}), attempts=1)
    alert = throttle.recovered(ok)
    assert alert.kind == "recovered" and [o.event.id for o in alert.dead] == ["e1"]
    assert alert.lines()[0] == "sync delivered e9 (BILL_PAYED) after failures."
    assert throttle.due() == []
    assert throttle.dead(dead("sync", 2)).kind == "dead"


class Broken:
    @hookimpl
    def handled_events(self):
        return ["BILL_*"]

    @hookimpl
    def handle_event(self, event):
        raise PermanentFailure(f"refused {event.id}")


class Listener:
    """Reads its settings into a typed object once, then hears outcomes and alerts."""

    def __init__(self, fail_alerts: bool = False) -> None:
        self.reads, self.outcomes, self.alerts, self.handled = 0, [], [], []
        self.fail_alerts = fail_alerts
        self.heard = threading.Event()

    @hookimpl
    def read_settings(self, config):
        self.reads += 1
        return ("typed", config.get("colour"))

    @hookimpl
    def handle_event(self, event, settings):
        self.handled.append(settings)

    @hookimpl
    def delivery_outcome(self, outcome, settings):
        assert settings == ("typed", "green")
        self.outcomes.append((outcome.kind, outcome.plugin, outcome.error))

    @hookimpl
    def alert(self, alert, settings):
        if self.fail_alerts:
            raise RuntimeError("alert channel down")
        self.alerts.append((alert.kind, alert.plugin, len(alert.dead)))
        self.heard.set()


@pytest.fixture
def app_with(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    apps = []

    def make(**plugins):
        app = create_app({"SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path / 'd.sqlite3'}",
                          "EXTRA_PLUGINS": list(plugins.items()),
                          "RETRY_SCHEDULE": "0", "ALERT_INTERVAL": "0.5s",
                          "PLUGIN_CONFIG": {name: {"colour": "green"} for name in plugins}})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["dolibarr_webhooks"].store.dispose()


def post(app, n: int) -> None:
    for i in range(n):
        response = app.test_client().post(f"/webhook/{SECRET}", data=body("BILL_VALIDATE", 100 + i))
        assert response.status_code == 200, response.json


class Quoting:
    """Fails quoting the object's note, as a plugin may: a forged body's lone surrogate in it."""

    @hookimpl
    def handle_event(self, event):
        raise PermanentFailure(f"refused note {event.object.get('note')!s}")


def test_a_failure_quoting_a_lone_surrogate_is_recorded_and_told_as_its_escape(app_with, deliver):
    """The outcome's write failed on it: the lane's thread died, the delivery stayed running."""
    listener = Listener()
    app = app_with(quoting=Quoting(), listener=listener)
    response = app.test_client().post(f"/webhook/{SECRET}",
                                      data=b'{"triggercode":"BILL_PAYED","object":{"id":7,"note":"x\\ud800y"}}')
    assert response.status_code == 200
    stats = deliver(app, idle=0.5)
    assert stats["deliveries"]["dead"] == 1 and stats["deliveries"]["running"] == 0, stats
    assert ("dead", "quoting", "PermanentFailure: refused note x\\ud800y") in listener.outcomes
    (row,) = app.extensions["dolibarr_webhooks"].store.list_deliveries(status="dead")
    assert row["last_error"] == "PermanentFailure: refused note x\\ud800y"


def test_listeners_hear_outcomes_and_bounded_alerts_with_settings_read_once(app_with, deliver):
    listener = Listener()
    app = app_with(broken=Broken(), listener=listener)
    post(app, 5)
    deliver(app, idle=1.5)  # past the alert interval: the worker's loop sends the digest
    assert listener.reads == 1, "settings are read once, at start-up, not per delivery"
    assert listener.handled == [("typed", "green")] * 5
    dead = [o for o in listener.outcomes if o[0] == "dead"]
    assert len(dead) == 5 and all(o[1] == "broken" and o[2].startswith("PermanentFailure: refused") for o in dead)
    assert not [o for o in listener.outcomes if o[1] == "listener"], "a plugin is not told about its own deliveries"
    assert listener.alerts == [("dead", "broken", 1), ("digest", "broken", 4)]


def test_a_failing_alert_channel_never_touches_another(app_with, deliver):
    failing, healthy = Listener(fail_alerts=True), Listener()
    app = app_with(broken=Broken(), failing=failing, healthy=healthy)
    post(app, 1)
    deliver(app)
    assert healthy.heard.wait(5)
    assert healthy.alerts == [("dead", "broken", 1)]
    stats = app.extensions["dolibarr_webhooks"].store.stats()
    assert stats["plugins"]["healthy"]["delivered"] == 1 and stats["plugins"]["failing"]["delivered"] == 1
