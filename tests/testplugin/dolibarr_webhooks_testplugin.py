"""Handlers for dolibarr-webhooks' own durability tests, and the helpers that read what they did.

Three entry points in ``dolibarr_webhooks.handlers``, each an object of ``@hookimpl`` methods:

- ``recorder`` appends one JSON line per handled event (``DOLIBARR_WEBHOOKS_RECORDER_FILE``),
  and, when told where, one per delivery outcome (``..._RECORDER_OUTCOMES``) and per alert
  (``..._RECORDER_ALERTS``);
- ``failer`` fails as ``DOLIBARR_WEBHOOKS_FAILER_MODE`` says (``always``, ``times:N``,
  ``permanent``, ``retry-after:S``), counting attempts in ``DOLIBARR_WEBHOOKS_FAILER_FILE``;
- ``sleeper`` sleeps ``DOLIBARR_WEBHOOKS_SLEEPER_SECONDS`` per event and logs start and end to
  ``DOLIBARR_WEBHOOKS_SLEEPER_FILE``.

Each raises ``PluginDisabled`` until configured, so having this package installed changes
nothing for other tests. They write to files rather than to memory because the worker under
test is often another process, and the file is the real effect a test can check.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from dolibarr_webhooks import ConfigError, PermanentFailure, PluginDisabled, RetryLater, hookimpl

__version__ = "0.1.0"

ENV_PREFIX = "DOLIBARR_WEBHOOKS_"


# -- files shared between processes --------------------------------------------------------
def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    # One write() of one line to an O_APPEND descriptor: lines from several processes never
    # interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, record_line(record).encode())
    finally:
        os.close(fd)


def record_line(record: dict[str, Any]) -> str:
    """A record's line in a handler's file. A process killed while writing may leave part of
    its line (the kernel copies page by page and stops at a fatal signal): the newline before
    each line starts the next record on a line of its own, after such a part."""
    return "\n" + json.dumps(record, separators=(",", ":")) + "\n"


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of a handler's file (``records_in``)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return records_in(text)


def records_in(text: str) -> list[dict[str, Any]]:
    """The complete records of a handler's file. What a process killed mid-write left of its
    line (``record_line``), the last line without its newline or a line that does not end its
    JSON, is the record of a run cut short: not kept."""
    return [record for line in text.split("\n")[:-1] if line and (record := _complete(line)) is not None]


def _complete(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # the part a killed process wrote


def _events(config: dict[str, Any]) -> list[str] | None:
    events = config.get("events")
    if events in (None, "", []):
        return None
    if isinstance(events, str):
        return [code.strip() for code in events.split(",") if code.strip()]
    return [str(code) for code in events]


# -- the handlers ----------------------------------------------------------------------------
class Recorder:
    """Records each handled event: which one, in which process, from when to when."""

    def __init__(self, name: str = "recorder") -> None:
        self.name = name

    @hookimpl
    def handled_events(self, settings: dict[str, Any]) -> list[str] | None:
        if not settings.get("file"):
            raise PluginDisabled(f"set {ENV_PREFIX}{self.name.upper()}_FILE")
        return _events(settings)

    @hookimpl
    def handle_event(self, event: Any, settings: dict[str, Any]) -> None:
        start = time.time()
        delay = float(settings.get("delay") or 0)
        if delay:
            time.sleep(delay)
        end = time.time()
        record = {
            "plugin": self.name, "event": event.id, "code": event.trigger_code, "object_id": event.object_id,
            "pid": os.getpid(), "thread": threading.get_ident(), "start": start, "end": end, "time": end,
            # The kernel's id: a thread started after another ended may get its get_ident().
            "native_thread": threading.get_native_id(),
            "frozen": gc.get_freeze_count(),  # objects of the process out of the full collections
        }
        if settings.get("full"):  # everything the plugin was handed, for tests of what plugins see
            record["handed"] = json.loads(event.to_json())
        append_record(settings["file"], record)

    @hookimpl
    def delivery_outcome(self, outcome: Any, settings: dict[str, Any]) -> None:
        if settings.get("outcomes"):
            append_record(settings["outcomes"], {"kind": outcome.kind, "plugin": outcome.plugin,
                                                 "event": outcome.event.id, "attempts": outcome.attempts,
                                                 "error": outcome.error, "replay": outcome.replay_command})

    @hookimpl
    def alert(self, alert: Any, settings: dict[str, Any]) -> None:
        if settings.get("alerts"):
            append_record(settings["alerts"], {
                "kind": alert.kind, "plugin": alert.plugin, "dead": [o.event.id for o in alert.dead],
                "recovered": alert.recovered.event.id if alert.recovered else None, "title": alert.title,
                "lines": alert.lines(), "time": time.time()})


def parse_mode(mode: Any) -> tuple[str, float]:
    kind, _, arg = str(mode).strip().partition(":")
    if kind in ("always", "permanent") and not arg:
        return kind, 0.0
    if kind in ("times", "retry-after"):
        try:
            return kind, float(arg)
        except ValueError:
            pass
    raise ConfigError(f"{ENV_PREFIX}FAILER_MODE", f"{mode!r} is not always, permanent, times:N or retry-after:S")


class Failer:
    """Fails on purpose, in the ways a real plugin can."""

    def __init__(self, name: str = "failer") -> None:
        self.name = name

    @hookimpl
    def handled_events(self, settings: dict[str, Any]) -> list[str] | None:
        if not settings.get("mode"):
            raise PluginDisabled(f"set {ENV_PREFIX}{self.name.upper()}_MODE")
        kind, _ = parse_mode(settings["mode"])
        if kind in ("times", "retry-after") and not settings.get("file"):
            raise ConfigError(f"{ENV_PREFIX}{self.name.upper()}_FILE", f"mode {kind} counts attempts in a file")
        return _events(settings)

    @hookimpl
    def handle_event(self, event: Any, settings: dict[str, Any]) -> None:
        kind, arg = parse_mode(settings["mode"])
        attempt = self._count(settings.get("file"), event)
        if kind == "always":
            raise RuntimeError(f"{self.name} fails attempt {attempt} on purpose")
        if kind == "permanent":
            raise PermanentFailure(f"{self.name} refuses this event for good")
        if kind == "times" and attempt <= arg:
            raise RuntimeError(f"{self.name} fails attempt {attempt} of {arg:g} on purpose")
        if kind == "retry-after" and attempt == 1:
            raise RetryLater(f"{self.name} asks to retry after {arg:g}s", after=arg)

    def _count(self, path: str | None, event: Any) -> int:
        """This attempt's number for this event, across processes (the file is locked while counted)."""
        if not path:
            return 0
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            attempt = 1 + sum(1 for record in records_in(fh.read()) if record["event"] == event.id)
            fh.write(record_line({"plugin": self.name, "event": event.id, "attempt": attempt, "pid": os.getpid(),
                                  "time": time.time()}))
            fh.flush()
        return attempt


class Sleeper:
    """Takes its time: a slow or hung plugin. A run ends after ``seconds``, or as soon as a test
    releases it (``release``), so a test can decide when an abandoned run comes back."""

    def __init__(self, name: str = "sleeper") -> None:
        self.name = name

    @hookimpl
    def handled_events(self, settings: dict[str, Any]) -> list[str] | None:
        if settings.get("seconds") in (None, ""):
            raise PluginDisabled(f"set {ENV_PREFIX}{self.name.upper()}_SECONDS")
        float(settings["seconds"])
        return _events(settings)

    @hookimpl
    def handle_event(self, event: Any, settings: dict[str, Any]) -> None:
        path = settings.get("file")
        run = 0
        if path:
            with open(path, "a+") as fh:  # locked while the runs of this event are counted
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.seek(0)
                run = 1 + sum(1 for r in records_in(fh.read()) if r["event"] == event.id and r["at"] == "start")
                fh.write(record_line({"plugin": self.name, "event": event.id, "at": "start", "run": run,
                                      "pid": os.getpid(), "time": time.time()}))
        deadline = time.monotonic() + float(settings["seconds"])
        gate = Path(f"{path}.release.{event.id}.{run}") if path else None
        while time.monotonic() < deadline and not (gate and gate.exists()):
            time.sleep(0.01)
        if path:
            append_record(path, {"plugin": self.name, "event": event.id, "at": "end", "run": run,
                                 "pid": os.getpid(), "time": time.time()})


def release(sleeper_file: str | os.PathLike, event_id: str, run: int) -> None:
    """End run ``run`` (1-based) of the sleeper on ``event_id`` now."""
    Path(f"{sleeper_file}.release.{event_id}.{run}").touch()


recorder = Recorder()
failer = Failer()
sleeper = Sleeper()


# -- configuration, for in-process apps and for real processes ------------------------------
def handler_config(workdir: str | os.PathLike, *, recorder: bool = False, recorder_delay: float = 0,
                   failer: str | None = None, sleeper: float | None = None,
                   events: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Settings of the handlers to turn on, files in ``workdir``: ``{plugin: {key: value}}``."""
    workdir = Path(workdir)
    config: dict[str, dict[str, Any]] = {}
    if recorder:
        config["recorder"] = {"file": str(workdir / "recorder.jsonl"), "delay": recorder_delay}
    if failer:
        config["failer"] = {"mode": failer, "file": str(workdir / "failer.jsonl")}
    if sleeper is not None:
        config["sleeper"] = {"seconds": sleeper, "file": str(workdir / "sleeper.jsonl")}
    if events:
        for table in config.values():
            table["events"] = list(events)
    return config


def handler_env(config: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The same settings as ``DOLIBARR_WEBHOOKS_<PLUGIN>_<KEY>`` variables, for real processes."""
    return {f"{ENV_PREFIX}{plugin.upper()}_{key.upper()}": json.dumps(value) if not isinstance(value, str) else value
            for plugin, table in config.items() for key, value in table.items()}


# -- apps, bodies and waiting -----------------------------------------------------------------
def body(code: str = "COMPANY_CREATE", object_id: int | str | None = None, **object_overrides: Any) -> bytes:
    """A real-shaped Dolibarr body; give each event its own ``object_id`` so none is a duplicate."""
    from dolibarr_webhooks.samples import sample_body

    data = json.loads(sample_body(code))
    if object_id is not None:
        data["object"]["id"] = object_id
    data["object"].update(object_overrides)
    return json.dumps(data).encode()


@contextlib.contextmanager
def app_factory(database_url: str) -> Iterator[Callable[..., Any]]:
    """``make(handlers, **settings)`` builds apps on one database (several apps may share it, as
    processes do); their stores are disposed on exit."""
    from dolibarr_webhooks import create_app
    from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET

    apps: list[Any] = []

    def make(handlers: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Any:
        app = create_app({"SECRET": WEBHOOKS_TEST_SECRET, "DATABASE_URL": database_url,
                          "SQLITE_SYNCHRONOUS": "normal", "RETRY_JITTER": 0, "TESTING": True,
                          "PLUGIN_CONFIG": handlers or {}, **settings})
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.extensions["dolibarr_webhooks"].store.dispose()


# The dashboard's forms carry this hidden field.
CSRF_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: Any, path: str = "/admin/login") -> str:
    """The CSRF token of the dashboard page at ``path``, for ``client`` (Flask's test client)."""
    return CSRF_TOKEN.search(client.get(path).text).group(1)


def dashboard_login(client: Any, password: str, **headers: str) -> Any:
    """Log ``client`` in to the dashboard as ``admin``; the login's answer."""
    return client.post("/admin/login", data={"username": "admin", "password": password,
                                             "csrf_token": csrf_token(client)}, headers=headers)


def command(app: Any, *args: str, exit_code: int = 0) -> Any:
    """Run ``webhooks ARGS`` with Flask's CLI runner; parsed JSON with ``--json``, else the output."""
    result = app.test_cli_runner().invoke(args=["webhooks", *args])
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout) if "--json" in args and exit_code == 0 else result.output


def by_plugin(app: Any, event_id: str) -> dict[str, dict[str, Any]]:
    """The deliveries of one event, by plugin, with their attempt logs (``show``)."""
    shown = app.extensions["dolibarr_webhooks"].store.show(event_id)
    assert shown is not None, f"no event {event_id}"
    return {d["plugin"]: d for d in shown["deliveries"]}


@contextlib.contextmanager
def running_worker(app: Any, name: str = "test-worker") -> Iterator[Any]:
    """The app's worker in a thread of this process, stopped (with its grace period) on exit."""
    worker = app.extensions["dolibarr_webhooks"].make_worker(name)
    thread = threading.Thread(target=worker.run, name=f"worker:{name}", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(app.config["SHUTDOWN_GRACE"] + 10)
        if thread.is_alive():
            raise RuntimeError(f"worker {name} did not stop")


class HeldFileLock:
    """An exclusive ``flock`` on ``path`` (made if missing), held as a writer of another process
    holds it: flock locks of two open files conflict, in one process or two. The writers' turn
    of an SQLite store is ``<database>.lock``, its fsync turn ``<database>.sync``. Let go by
    ``release()``, or at the end of a ``with`` block."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)

    def __enter__(self) -> "HeldFileLock":
        return self

    def __exit__(self, *_exc) -> None:
        self.release()


def files_open(prefix: str | os.PathLike) -> list[str]:
    """The files this process has open (``/proc/self/fd``) whose path starts with ``prefix``:
    what a closed or disposed-of store must no longer hold."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing (the listing's own, say)
            target = os.readlink(fd)
            if target.startswith(str(prefix)):
                found.append(target)
    return found


@contextlib.contextmanager
def writes_blocked(database_url: str) -> Iterator[dict[str, float]]:
    """Another connection holds what every write to the deliveries needs (SQLite's write lock;
    PostgreSQL's deliveries table in EXCLUSIVE mode, which still lets plain reads through) until
    the block ends; yields a dict that gets the release time under ``"at"``."""
    released: dict[str, float] = {}
    if database_url.startswith("sqlite"):
        import sqlite3

        conn: Any = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        import psycopg

        from dolibarr_webhooks.store import libpq_url

        conn = psycopg.connect(libpq_url(database_url))
        conn.execute("LOCK TABLE deliveries IN EXCLUSIVE MODE")
    try:
        yield released
    finally:
        released["at"] = time.time()
        conn.rollback()
        conn.close()


def overlapping_runs(records: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of recorder lines of the same plugin and event whose [start, end] intervals overlap."""
    by_delivery: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        by_delivery.setdefault((record["plugin"], record["event"]), []).append(record)
    pairs = []
    for runs in by_delivery.values():
        runs.sort(key=lambda r: r["start"])
        pairs += [(a, b) for a, b in zip(runs, runs[1:]) if b["start"] < a["end"]]
    return pairs
