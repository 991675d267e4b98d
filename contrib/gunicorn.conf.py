"""gunicorn settings for production.

    gunicorn -c contrib/gunicorn.conf.py 'dolibarr_webhooks:create_app()'

For gunicorn BEHIND nginx (contrib/nginx/dolibarr-webhooks.conf), on loopback: nginx
hands its threads whole requests, so a slow client never holds one. Do not expose it to
Dolibarr directly; 'dolibarr-webhooks serve' is the setup for that.

Every value below can be changed with the environment variable named next to it (the
systemd unit reads them from /etc/dolibarr-webhooks/dolibarr-webhooks.env); options given
on gunicorn's command line win over this file.

Dolibarr posts each webhook from inside its user's web request and gives up after 30 s
(5 s to connect), counting a timeout as a failure that rolls the user's action back. The
receiver stores and answers in milliseconds; the timeouts here only bound the cases
where something is stuck, and they all end well before Dolibarr's 30 s.
"""

import os
import sys

# The metrics folder first: prometheus_client picks memory or files when it is imported,
# which the application's modules, imported below, do. dolibarr_webhooks.web.gunicorn does
# not import it.
from dolibarr_webhooks.exceptions import ConfigError
from dolibarr_webhooks.web.gunicorn import (SERVE_THREADS, check_before_forking, mark_process_dead,
                                            prepare_multiproc_dir, remove_multiproc_dir, web_processes,
                                            wipe_multiproc_dir)

# PROMETHEUS_MULTIPROC_DIR: where every process writes its metric samples, so that /metrics
# adds up all gunicorn workers AND the separate 'dolibarr-webhooks worker' process (give it
# the same folder: the systemd units use /run/dolibarr-webhooks/metrics). Unset: a temporary
# folder of this gunicorn only, removed at exit (deliveries then do not show in /metrics).
# A folder that cannot be made or written is one line (gunicorn would print a traceback).
try:
    _metrics_dir, _metrics_dir_is_ours = prepare_multiproc_dir()
except ConfigError as _exc:
    sys.exit(f"Error: {_exc}")

# Flask and the application's modules are imported here, in the master, after the metrics
# folder is set: each worker forked from it then starts without importing them again (two
# workers importing them at once on a small machine answer their first requests a second
# or more later). The app itself is still built in each worker (preload_app below).
import dolibarr_webhooks.web.app  # noqa: E402,F401
from dolibarr_webhooks.web.access_log import writes_access_lines  # noqa: E402


def _settings():
    """The service's own settings (environment, then .env), for the log format, level and port:
    read once, in the master; its logger and the workers it forks use the same ones. A bad
    setting is reported by on_starting below, in one line."""
    from dolibarr_webhooks.settings import ConfigError, process_settings

    try:
        return process_settings().values
    except ConfigError:
        return {}


_service = _settings()
# A PostgreSQL server that does not answer must fail a request in seconds, not hold a
# worker's thread until the worker is killed (libpq reads this variable).
os.environ.setdefault("PGCONNECT_TIMEOUT", "5")

# GUNICORN_BIND: comma-separated addresses. Default 127.0.0.1:<DOLIBARR_WEBHOOKS_PORT or 8080>:
# only nginx, on this host, reaches gunicorn. Never bind a public address: the application
# trusts X-Forwarded-For from DOLIBARR_WEBHOOKS_TRUSTED_PROXIES hops. unix:/run/... works too.
# Started by systemd with contrib/systemd/dolibarr-webhooks.socket, gunicorn listens on the
# socket systemd hands it (LISTEN_FDS) and ignores this.
bind = (os.environ.get("GUNICORN_BIND") or f"127.0.0.1:{_service.get('PORT', 8080)}").split(",")

# WEB_CONCURRENCY: worker processes (gunicorn's own variable). As serve: two per CPU (Python
# runs one thread of a process at a time, and a process committing waits for its own
# threads: web_processes says why), at least 2 so that one can be replaced while the other
# answers, at most 8. GUNICORN_THREADS: threads of each, as serve (16). Each worker holds up
# to 8 + 16 database connections at most (SQLAlchemy's pool).
workers = int(os.environ.get("WEB_CONCURRENCY") or web_processes())
threads = int(os.environ.get("GUNICORN_THREADS") or SERVE_THREADS)

# Threads, as serve: the requests a process has in hand at once share one transaction and
# one fsync (store/batch.py), where sync workers committed each request alone: a quarter more
# requests a second at concurrency 16, on SQLite and on PostgreSQL (bench/HISTORY.rst).
# nginx buffers the whole request body (proxy_request_buffering on) before it opens the
# connection to gunicorn, so a slow Dolibarr upload never ties a thread up.
# gunicorn's threaded worker with two changes: its own errors (a request it cannot parse, a
# worker aborted after its timeout) are answered in the service's JSON, never its HTML
# page that repeats the request line; and a client gets 5 s to send its headers and 12 s
# for its body, so one that stalls is dropped before the timeout below kills the worker.
# This file is for gunicorn BEHIND nginx, on loopback; 'dolibarr-webhooks serve' is the
# setup for direct exposure. Sync workers (one request each, no shared commit) remain:
# -k dolibarr_webhooks.web.gunicorn.SyncWorker with GUNICORN_THREADS=1 (gunicorn runs its
# plain threaded worker instead of any sync worker given threads).
worker_class = "dolibarr_webhooks.web.gunicorn.ThreadWorker"

# GUNICORN_TIMEOUT: a worker silent for this long is killed and replaced (a deadlock, a
# stuck disk). The timeouts are ordered: DOLIBARR_WEBHOOKS_REQUEST_DEADLINE (10 s; every
# wait for the store ends by then, and what is not stored by then is not stored) < this
# (20 s) < nginx's proxy_read_timeout (25 s) < Dolibarr's 30 s. A worker killed after it
# committed but before it answered would leave a stored event Dolibarr counts as failed:
# the deadline, well below, makes that a stuck-disk case only.
timeout = int(os.environ.get("GUNICORN_TIMEOUT") or 20)

# GUNICORN_GRACEFUL_TIMEOUT: on SIGTERM (systemctl stop/restart) gunicorn stops accepting,
# lets running requests finish for this long, then kills what is left. A request that got
# its 2xx has already been stored, so nothing acknowledged is lost. Keep the unit's
# TimeoutStopSec above it.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT") or 20)

# nginx keeps its connections to gunicorn and closes an idle one after 1 s (its upstream's
# keepalive_timeout), so before gunicorn closes it here, after 2 s; a stopping worker also
# keeps its idle connections 2 s, answering with "Connection: close" (gunicorn 24 and
# later). Keep this above nginx's: a connection gunicorn closes while nginx sends a POST
# on it is a 502 to Dolibarr. Any other client that keeps one open gets 2 s as well.
keepalive = 2

# GUNICORN_MAX_REQUESTS: recycle a worker after this many requests (0: never), with jitter so
# workers do not restart together. Counters of recycled workers stay in the metrics folder.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS") or 0)
max_requests_jitter = max(max_requests // 10, 0)

# FORWARDED_ALLOW_IPS (gunicorn's own variable): addresses whose X-Forwarded-Proto gunicorn
# believes (wsgi.url_scheme). Only the local proxy. The client address itself comes from
# X-Forwarded-For, read by the application for DOLIBARR_WEBHOOKS_TRUSTED_PROXIES hops.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"

# The application is loaded in each worker after the fork: no database connection or
# prometheus_client state is shared by accident between processes.
preload_app = False

# The heartbeat file in memory, not on a disk that may stall (gunicorn's FAQ).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

proc_name = "dolibarr-webhooks"

# Logs on stderr/stdout (journald under systemd). RedactingLogger removes secrets from the
# request line, the path, the query string, the Basic user and credential headers, and
# writes JSON lines when DOLIBARR_WEBHOOKS_LOG_FORMAT=json.
logger_class = "dolibarr_webhooks.web.gunicorn.RedactingLogger"
errorlog = "-"
loglevel = str(_service.get("LOG_LEVEL") or "info").lower()

# GUNICORN_ACCESSLOG: "-" (stdout), a file, or empty for none. Unset: one access line per
# request in the journal, whatever the level. At the default level (info, or debug) the
# application writes it (dolibarr_webhooks.access: the outcome, trigger code, event id, source
# and request id), and gunicorn's own would repeat it for about 0.1 ms of CPU a request, 7 %
# of the requests a second at 16 connections (bench/HISTORY.rst); at warning and above the
# application writes none, and gunicorn's is the one. Set it to keep gunicorn's line beside
# the application's (it also counts the bytes sent and the probes, /health included).
# The format never uses %(u)s, %({authorization}i)s or the raw query: even if it did,
# RedactingLogger masks them. rid= is the X-Request-Id shared with nginx and the app.
if "GUNICORN_ACCESSLOG" in os.environ:
    accesslog = os.environ["GUNICORN_ACCESSLOG"] or None
else:
    accesslog = None if writes_access_lines(loglevel) else "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'

# gunicorn 25.1+ opens a control socket in $HOME or $XDG_RUNTIME_DIR; the service has no
# use for it and ProtectSystem=strict forbids it. GUNICORN_CONTROL_SOCKET=/run/.../gunicorn.ctl
# turns it on.
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]


def on_starting(server):
    # A bad setting or a store out of reach stops gunicorn here, in one line, before any
    # worker is forked (each said it, and two at once could end in gunicorn's traceback).
    check_before_forking(server)
    # Samples of processes that are gone belong to an earlier run: start counting afresh.
    # Files of live processes (the worker service shares the folder) are kept.
    removed = wipe_multiproc_dir(_metrics_dir)
    server.log.info("metrics folder %s (%d stale files removed)", _metrics_dir, removed)
    if timeout >= 30 or graceful_timeout <= 0:
        server.log.warning("timeout=%ss: Dolibarr gives up after 30 s; keep it well below", timeout)
    deadline = _service.get("REQUEST_DEADLINE")
    if deadline and timeout <= deadline:
        server.log.warning("timeout=%ss is not above DOLIBARR_WEBHOOKS_REQUEST_DEADLINE (%ss): a worker may be "
                           "killed after storing an event and before answering; keep the deadline below", timeout,
                           deadline)


def child_exit(server, worker):
    # prometheus_client's bookkeeping for a worker that exited (its live gauges go).
    mark_process_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_is_ours:
        remove_multiproc_dir(_metrics_dir)


def post_worker_init(worker):
    # With DOLIBARR_WEBHOOKS_EMBEDDED_WORKER=1 each web process also delivers events (no
    # separate worker service). Off by default: production runs dolibarr-webhooks-worker.service.
    from dolibarr_webhooks.web.gunicorn import post_worker_init as start_embedded_worker

    start_embedded_worker(worker)
