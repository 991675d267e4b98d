"""gunicorn glue: a logger that never writes a secret, the multi-process metrics folder,
and the runner behind ``serve``. ``contrib/gunicorn.conf.py`` uses all of it."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone

from gunicorn.glogging import Logger

from .logs import MASK, SecretScrubber, TextFormatter, make_formatter, redact

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request headers (``{name}i``) and environ keys (``{name}e``) whose values are credentials.
_SENSITIVE_ATOM = re.compile(r"authorization|cookie|signature|token|secret|api[-_]?key|password", re.IGNORECASE)
_TARGET_ATOMS = {"{raw_uri}e", "{request_uri}e", "{path_info}e", "{script_name}e", "{http_referer}e",
                 "{referer}i", "f", "U"}
_QUERY_ATOMS = {"q", "{query_string}e"}


def _known_secrets() -> list[str]:
    """The secrets of the service's settings, to mask wherever they appear."""
    from .config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError:  # the workers stop on it, with the message
        return []
    return settings.sensitive_values


def _log_format() -> str:
    return os.environ.get("DOLIBARR_WEBHOOKS_LOG_FORMAT", "text").strip().lower()


class RedactingLogger(Logger):
    """gunicorn's logger with secrets removed from the path, the query string, the user
    (Basic credentials) and credential headers; JSON lines when
    ``DOLIBARR_WEBHOOKS_LOG_FORMAT=json``, like the application's own lines."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        json_lines = _log_format() == "json"
        scrubber = SecretScrubber()
        scrubber.add(_known_secrets())
        for handler in self.error_log.handlers:
            # gunicorn writes the request target in some error messages (``Error handling request /...``).
            handler.setFormatter(make_formatter("json", scrubber) if json_lines else
                                 TextFormatter("%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
                                               scrubber=scrubber, datefmt="[%Y-%m-%d %H:%M:%S %z]"))
        for handler in self.access_log.handlers:
            # Last line of defence: a mistyped path (/webhooks/<secret>) is not a webhook path,
            # but the secret itself is known and masked.
            handler.setFormatter(TextFormatter("%(message)s", scrubber=scrubber))

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["r"] = "%s %s %s" % (environ.get("REQUEST_METHOD"), redact(environ.get("RAW_URI") or ""),
                                   environ.get("SERVER_PROTOCOL"))
        # https://user:secret@host/ arrives as Basic credentials; either part may be the secret.
        if atoms.get("u") not in (None, "-"):
            atoms["u"] = MASK
        for key, value in list(atoms.items()):
            if not isinstance(value, str):
                if key.endswith("}e"):
                    del atoms[key]  # file objects, callables: nothing a format should print
                continue
            if key in _QUERY_ATOMS:
                atoms[key] = redact("?" + value)[1:] if value else value
            elif key in _TARGET_ATOMS:
                atoms[key] = redact(value)
            elif key.startswith("{") and _SENSITIVE_ATOM.search(key):
                atoms[key] = MASK
        return atoms

    def _access_enabled(self) -> bool:
        enabled = getattr(self, "access_log_enabled", None)
        if enabled is not None:
            return bool(enabled)
        return bool(self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog)  # gunicorn < 25

    def access(self, resp, req, environ, request_time):
        if _log_format() != "json":
            return super().access(resp, req, environ, request_time)
        if not self._access_enabled():
            return None
        atoms = self.atoms(resp, req, environ, request_time)
        query = atoms.get("q") or ""
        path = (atoms.get("U") or "") + ("?" + query if query else "")
        data = {
            "time": datetime.now(timezone.utc).isoformat(),
            "level": "info",
            "logger": "gunicorn.access",
            "message": f"{atoms.get('m')} {path} {atoms.get('s')}",
            "request_id": atoms.get("{x-request-id}o") or "-",
            "status": int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s"),
            "method": atoms.get("m"),
            "path": path,
            "client": atoms.get("h"),
            "duration_ms": round(atoms.get("D", 0) / 1000, 2),
            "bytes": atoms.get("B"),
            "user_agent": atoms.get("a"),
        }
        try:
            self.access_log.info(json.dumps(data, ensure_ascii=False, default=str))
        except Exception:  # gunicorn's own access() logs a broken line the same way
            self.exception("cannot write the access log line")
        return None


# -- Prometheus multi-process folder ----------------------------------------------------
def prepare_multiproc_dir(path: str | None = None) -> tuple[str, bool]:
    """The folder where every process (gunicorn workers and the ``worker`` command) writes
    its metric samples: ``PROMETHEUS_MULTIPROC_DIR`` or, when unset, a new temporary
    folder (then only this gunicorn's processes see it). Must run before any process
    imports prometheus_client. Returns the folder and whether it was created here."""
    path = path or os.environ.get(MULTIPROC_ENV)
    created = False
    if not path:
        path = tempfile.mkdtemp(prefix="dolibarr-webhooks-metrics-")
        created = True
    os.makedirs(path, exist_ok=True)
    os.environ[MULTIPROC_ENV] = path
    return path, created


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def wipe_multiproc_dir(path: str, keep_live: bool = True) -> int:
    """Remove the sample files left by earlier runs. With ``keep_live``, files of processes
    still running are kept: the ``worker`` service shares the folder and may be running
    while the web service restarts. Returns the number of files removed."""
    removed = 0
    for name in glob.glob(os.path.join(path, "*.db")):
        match = re.search(r"_(\d+)\.db$", name)
        if keep_live and match and int(match.group(1)) != os.getpid() and _alive(int(match.group(1))):
            continue
        try:
            os.remove(name)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def mark_process_dead(pid: int) -> None:
    """A gunicorn worker exited: drop its live gauges (its counters stay, as they must)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_multiproc_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def post_worker_init(worker) -> None:
    """gunicorn hook: with ``DOLIBARR_WEBHOOKS_EMBEDDED_WORKER``, each web process also runs a
    delivery worker thread. Started here, after the fork, never in ``create_app`` (a CLI
    command or a preloading master must not start one)."""
    from .worker import start_embedded

    app = worker.wsgi
    if app.config.get("EMBEDDED_WORKER"):
        start_embedded(app.extensions["dolibarr_webhooks"].make_worker())


def run(bind: str, workers: int = 2) -> None:
    """``dolibarr-webhooks serve``: gunicorn with the embedded defaults, for a first try."""
    from gunicorn.app.base import BaseApplication

    path, created = prepare_multiproc_dir()
    wipe_multiproc_dir(path)

    class Application(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 20)
            self.cfg.set("graceful_timeout", 25)
            self.cfg.set("logger_class", RedactingLogger)
            self.cfg.set("child_exit", lambda _server, worker: mark_process_dead(worker.pid))
            self.cfg.set("post_worker_init", post_worker_init)
            if created:
                self.cfg.set("on_exit", lambda _server: remove_multiproc_dir(path))
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self):
            from . import create_app

            return create_app()

    Application().run()
