"""gunicorn glue: a logger that never writes a secret, worker classes that answer in JSON
and give each client a bounded time to send its request, the multi-process metrics
folder, and the runner behind ``serve``. ``contrib/gunicorn.conf.py`` uses all of it."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import re
import select
import shutil
import socket
import tempfile
import time
from typing import Iterator

from gunicorn import util
from gunicorn.errors import AppImportError
from gunicorn.glogging import Logger
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker
from gunicorn.workers.sync import SyncWorker as _SyncWorker

from ..credentials import SENSITIVE_NAME
from ..logs import MASK, SecretScrubber, TextFormatter, make_formatter, redact
from ..metrics_folder import MULTIPROC_ENV, made
from ..settings import ConfigError, Settings, process_settings
from ..store import STORE_ERRORS, Store, unavailable
from ..startup import freeze_startup_objects
from .balance import STEP_BACK, ConnectionShare, alive


# What the JSON access line reads (RedactingLogger.access), whatever the text format.
_JSON_ATOMS = frozenset({"q", "U", "m", "s", "{x-request-id}o", "h", "D", "B", "a"})
_FORMAT_KEY = re.compile(r"%\(([^)]*)\)")


@functools.lru_cache(maxsize=8)
def _printed_atoms(access_log_format: str) -> frozenset[str]:
    """The atoms an access line may print: those the format names (header and environ atoms
    in lower case, as gunicorn looks them up) and those of the JSON line."""
    named = (key.lower() if key.startswith("{") else key for key in _FORMAT_KEY.findall(access_log_format))
    return frozenset(named) | _JSON_ATOMS


_TARGET_ATOMS = {"{raw_uri}e", "{request_uri}e", "{path_info}e", "{script_name}e", "{http_referer}e",
                 "{referer}i", "f", "U"}
_QUERY_ATOMS = {"q", "{query_string}e"}


def _settings() -> Settings | None:
    """This process's settings (the master read them: ``contrib/gunicorn.conf.py`` or ``serve``);
    None when they do not load: the workers stop on it, with the message."""
    try:
        return process_settings()
    except ConfigError:
        return None


class RedactingLogger(Logger):
    """gunicorn's logger with secrets removed from the path, the query string, the user
    (Basic credentials) and credential headers; JSON lines when the service's
    ``LOG_FORMAT`` is ``json`` (from ``.env`` too), like the application's own lines."""

    json_lines = False

    def setup(self, cfg) -> None:
        super().setup(cfg)
        settings = _settings()
        self.json_lines = json_lines = settings is not None and settings["LOG_FORMAT"] == "json"
        scrubber = SecretScrubber()
        scrubber.add(settings.sensitive_values if settings is not None else ())
        for handler in self.error_log.handlers:
            # gunicorn writes the request target in some error messages (``Error handling request /...``).
            handler.setFormatter(make_formatter("json", scrubber) if json_lines else
                                 TextFormatter("%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
                                               scrubber=scrubber, datefmt="[%Y-%m-%d %H:%M:%S %z]"))
        for handler in self.access_log.handlers:
            # Last line of defence: a mistyped path (/webhooks/<secret>) is not a webhook path,
            # but the secret itself is known and masked. JSON lines in the application's format.
            handler.setFormatter(make_formatter("json", scrubber) if json_lines else
                                 TextFormatter("%(message)s", scrubber=scrubber))

    def atoms(self, resp, req, environ, request_time):
        # Only the atoms a line prints are checked and kept: gunicorn makes one of every
        # header and environ key, and redacting them all was a large share of a request's CPU.
        printed = _printed_atoms(self.cfg.access_log_format)
        every = super().atoms(resp, req, environ, request_time)
        atoms = {key: every[key] for key in printed if key in every}
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
            elif key.startswith("{") and SENSITIVE_NAME.search(key):  # a header or environ key named like a credential
                atoms[key] = MASK
        return atoms

    def _access_enabled(self) -> bool:
        enabled = getattr(self, "access_log_enabled", None)
        if enabled is not None:
            return bool(enabled)
        return bool(self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog)  # gunicorn < 25

    def access(self, resp, req, environ, request_time):
        if not self.json_lines:
            return super().access(resp, req, environ, request_time)
        if not self._access_enabled():
            return None
        atoms = self.atoms(resp, req, environ, request_time)
        query = atoms.get("q") or ""
        path = (atoms.get("U") or "") + ("?" + query if query else "")
        # One JSON format for every access line: the fields go on the record, and the handler's
        # JsonFormatter (logs.py) writes them as it writes the application's own.
        fields = {
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
            self.access_log.info("%s %s %s", atoms.get("m"), path, atoms.get("s"), extra=fields)
        except Exception:  # gunicorn's own access() logs a broken line the same way
            self.exception("cannot write the access log line")
        return None


# -- worker classes ---------------------------------------------------------------------
# A client gets HEAD_DEADLINE to send its request line and headers (Dolibarr sends them in
# one packet), then BODY_DEADLINE for its body, and may pause at most READ_STALL between
# two packets. Dolibarr sends a 10 MB invoice in well under a second on a LAN; behind nginx,
# gunicorn receives every request at loopback speed. Both stay below gunicorn's worker
# timeout (20 s), so a client that stalls or trickles (slowloris) holds a worker or a
# thread for seconds, never long enough to have the worker killed.
HEAD_DEADLINE = 5.0
BODY_DEADLINE = 12.0
READ_STALL = 5.0

# What gunicorn answers itself (the request never reached the application), in words that
# never repeat the request: its request line may hold the secret.
_GUNICORN_MESSAGES = {
    400: "the request is not valid HTTP/1.1",
    403: "forbidden",
    414: "the request line is too long",
    417: "the Expect header cannot be met",
    431: "the request headers are too many or too large",
    500: "the service failed; the error is in its log",
    501: "this transfer coding is not supported",
}


class RequestTimeout(NoMoreData):
    """The client did not send its request in time. gunicorn treats it as a client that went
    away (a line at debug level, the connection closed); the application as a body cut short."""

    def __str__(self) -> str:
        return (f"the request was not received in time ({HEAD_DEADLINE:g} s for its headers, "
                f"{BODY_DEADLINE:g} s for its body, pauses under {READ_STALL:g} s)")


class _ReadDeadline:
    """The client socket, whose reads end at a deadline, and whose answers leave in one send;
    everything else is the socket's.

    Reads: the socket stays in blocking mode. A read takes what has arrived without waiting
    (``MSG_DONTWAIT``), and only when nothing has does it wait, in ``poll``, until the
    deadline. A timeout on the socket instead cost two system calls a read to switch its
    mode, and one more to poll before reading what had already arrived (issue #15).

    Writes: gunicorn sends an answer's head on its own, then its body: two sends, two
    packets and two wake-ups of the client for a webhook's 100-byte answer. Within
    ``handling`` the head waits for the first bytes of the body and leaves with them."""

    def __init__(self, sock) -> None:
        self._sock = sock
        # Called for every request by gthread's loop and its selector: bound here, they do
        # not go through __getattr__ at each call.
        self.fileno, self.setblocking, self.gettimeout = sock.fileno, sock.setblocking, sock.gettimeout
        self._readable: select.poll | None = None
        self._holding = False
        self._held = b""
        self.restart()

    def restart(self) -> None:
        """A new request: its head is due."""
        self._deadline = time.monotonic() + HEAD_DEADLINE

    def recv(self, size: int, *flags):
        sock = self._sock
        if sock.gettimeout() == 0.0:  # non-blocking: gunicorn polls, nothing waits
            return sock.recv(size, *flags)
        flag = _DONTWAIT | (flags[0] if flags else 0)
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout()
            try:
                return sock.recv(size, flag)
            except BlockingIOError:
                pass
            except TimeoutError:  # a timeout gunicorn set itself (draining a body it will not read)
                raise RequestTimeout() from None
            if self._readable is None:
                self._readable = select.poll()
                self._readable.register(sock.fileno(), select.POLLIN)
            if not self._readable.poll(min(remaining, READ_STALL) * 1000):
                raise RequestTimeout()

    @contextlib.contextmanager
    def handling(self):
        """One request, from its head received: its body is due by BODY_DEADLINE; its answer's
        head is held until the body's first bytes, and whatever is still held leaves at the
        end (an answer without a body). Outside, every send goes out at once: gunicorn's own
        error pages are written after the request failed."""
        self._deadline = time.monotonic() + BODY_DEADLINE
        self._holding = True
        try:
            yield
        except BaseException:  # gunicorn's own exception goes on, whatever the client became
            self._holding = False
            self._let_go()
            raise
        self._holding = False
        self._flush()

    def sendall(self, data: bytes) -> None:
        if self._holding and not self._held:
            self._held = bytes(data)  # gunicorn's first send of an answer is its head
            self._holding = False
            return
        if self._held and len(data) <= _JOINED_BODY:
            data, self._held = self._held + data, b""
        self._flush()
        self._sock.sendall(data)

    def sendfile(self, *args, **kwargs):
        self._flush()
        return self._sock.sendfile(*args, **kwargs)

    # gunicorn closes a connection whose answer broke off after its head (an application that
    # yields text, not bytes): the head leaves first, as it would have without waiting.
    def shutdown(self, how: int) -> None:
        self._let_go()
        self._sock.shutdown(how)

    def close(self) -> None:
        self._let_go()
        self._sock.close()

    def _flush(self) -> None:
        held, self._held = self._held, b""
        if held:
            self._sock.sendall(held)

    def _let_go(self) -> None:
        """What is held, sent if the client still takes it: the connection is given up."""
        with contextlib.suppress(OSError):
            self._flush()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _handling(sock):
    """A request of both worker classes, from its head received (``_ReadDeadline.handling``);
    over TLS, gunicorn's socket as it is."""
    return sock.handling() if isinstance(sock, _ReadDeadline) else contextlib.nullcontext()


# socket.MSG_DONTWAIT is an enum.IntFlag, whose | runs in Python at every read.
_DONTWAIT = int(socket.MSG_DONTWAIT)
# A body up to this size leaves in the head's send (copied after it); a larger one after it.
_JOINED_BODY = 64 * 1024


# A kept-alive connection's next request is waited for by the thread that answered the last
# one, for this long (see ThreadWorker.handle). gthread hands the connection back to its main
# loop instead: a wake-up through a pipe, the poller, then a new future for the next request,
# three thread switches and about a sixth of the Python time of a request under load (issue
# #15). A client that closes after its answer, as Dolibarr's curl does, is seen closing here
# too, without that round. A client that sends nothing in time goes back to gthread's poller.
NEXT_REQUEST_WAIT_MS = 10


def next_request_within(conn, milliseconds: int) -> bool:
    """Whether ``conn`` (gthread's ``TConn``) has its next request, or its close, to read
    within ``milliseconds``: bytes already read ahead by its parser, or the socket readable.
    Not gthread's ``TConn.wait_for_data``: it opens a selector per call, and once it has seen
    data it answers True for good (it is meant for a connection's first request only)."""
    unreader = getattr(conn.parser, "unreader", None)
    if unreader is not None and unreader.buf.getvalue():  # usually empty: nothing is copied
        return True
    poller = getattr(conn, "next_request_poll", None)
    if poller is None:  # one per connection: made and registered once, not for each request
        poller = conn.next_request_poll = select.poll()
        poller.register(conn.sock.fileno(), select.POLLIN)
    return bool(poller.poll(milliseconds))


class _Captured:
    """Takes what gunicorn writes to a client instead of the client."""

    def __init__(self, sock) -> None:
        self._sock = sock
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _JsonErrors:
    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn logs the error and picks the status (400 for a request it cannot parse,
        500 when a worker is aborted after its timeout); the client gets the service's JSON
        instead of gunicorn's HTML page, which repeats the request line."""
        captured = _Captured(client)
        super().handle_error(req, captured, addr, exc)
        status_line = captured.data.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        status = int(status_line[1]) if len(status_line) == 3 and status_line[1].isdigit() else 500
        reason = status_line[2] if len(status_line) == 3 else "Internal Server Error"
        body = json.dumps({"error": reason.lower().replace(" ", "_"),
                           "message": _GUNICORN_MESSAGES.get(status, reason.lower()), "status": status}) + "\n"
        answer = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}")
        try:
            util.write_nonblock(client, answer.encode("latin-1"))
        except Exception:  # the client is gone: gunicorn's own write_error gives up the same way
            self.log.debug("Failed to send error message.")


class SettledConfig:
    """A web process's gunicorn configuration, each setting read once. gunicorn reads its
    settings at every request (the parser's limits, the header and proxy policies, the
    hooks: about thirty a request), each through ``Config.__getattr__`` and ``Setting.get``:
    18 to 29 us a request (issue #15). A web process's settings do not change once it runs
    (a reload starts new processes), so each value, property or method is kept at its first
    read; a change through ``set`` forgets them all, since properties such as ``is_ssl``
    derive from other settings."""

    def __init__(self, cfg) -> None:
        self.__dict__["_cfg"] = cfg

    def __getattr__(self, name: str):
        value = self.__dict__[name] = getattr(self._cfg, name)
        return value

    def __setattr__(self, name: str, value) -> None:
        setattr(self._cfg, name, value)
        self._forget()

    def set(self, name: str, value) -> None:
        self._cfg.set(name, value)
        self._forget()

    def _forget(self) -> None:
        cfg = self._cfg
        self.__dict__.clear()
        self.__dict__["_cfg"] = cfg


class _FreezesStartup:
    """Freezes once the web process has loaded its application (gunicorn's ``load_wsgi``),
    and reads its configuration once (``SettledConfig``)."""

    def init_process(self) -> None:
        self.cfg = SettledConfig(self.cfg)
        super().init_process()

    def load_wsgi(self) -> None:
        # A bad setting or a store out of reach is one line (gunicorn prints an AppImportError's
        # text and stops: "App failed to load"), not a traceback from each process.
        with _said_as(AppImportError):
            super().load_wsgi()
        freeze_startup_objects()


@contextlib.contextmanager
def _said_as(error: type[Exception], settings: Settings | None = None) -> Iterator[None]:
    """A bad setting or a store out of reach raised again as ``error``, whose text is the one
    line that says it. ``settings``: those the store was made from, else this process's."""
    try:
        yield
    except ConfigError as exc:
        raise error(str(exc)) from None
    except STORE_ERRORS as exc:  # the settings were read: the store was made from them
        raise error(unavailable((settings or process_settings())["DATABASE_URL"], exc)) from None


class SyncWorker(_FreezesStartup, _JsonErrors, _SyncWorker):
    """gunicorn's sync worker, with JSON errors and a deadline on reading each request.
    For contrib/gunicorn.conf.py, behind nginx: one slow client holds a whole worker."""

    def handle(self, listener, client, addr) -> None:
        super().handle(listener, client if self.cfg.is_ssl else _ReadDeadline(client), addr)

    def handle_request(self, listener, req, client, addr):
        with _handling(client):
            return super().handle_request(listener, req, client, addr)


class ThreadWorker(_FreezesStartup, _JsonErrors, _ThreadWorker):
    """gunicorn's gthread worker, with JSON errors and a deadline on reading each request
    (``serve``): a slow client holds one thread for at most HEAD_DEADLINE + BODY_DEADLINE, and the other
    threads keep answering. A kept-alive connection's next request is answered by the thread
    that answered the last one, when it comes within NEXT_REQUEST_WAIT_MS. A new connection
    goes to the process with fewest (web/balance.py)."""

    def handle(self, conn):
        keepalive = self._handle_one(conn)
        # True: answered, and the connection kept alive (the gthread of the gunicorn releases
        # we install; older ones return a tuple here, and are left to their own loop).
        while keepalive is True and self._may_wait_here() and next_request_within(conn, NEXT_REQUEST_WAIT_MS):
            keepalive = self._handle_one(conn)
        return keepalive

    def _handle_one(self, conn):
        if not self.cfg.is_ssl:
            if not isinstance(conn.sock, _ReadDeadline):
                conn.sock = _ReadDeadline(conn.sock)
            conn.sock.restart()  # each request of a kept-alive connection has its own time
        return super().handle(conn)

    def _may_wait_here(self) -> bool:
        """Whether this thread may wait for its connection's next request: while the process
        has a thread for each of its connections, no other connection can be waiting for it
        (one that arrives meanwhile waits NEXT_REQUEST_WAIT_MS at most). Not over TLS: bytes
        the TLS layer has already read would not make the socket readable."""
        return self.alive and not self.cfg.is_ssl and getattr(self, "nr_conns", math.inf) <= self.cfg.threads

    def handle_request(self, req, conn):
        with _handling(conn.sock):
            return super().handle_request(req, conn)

    # A new connection goes to the process with fewest (web/balance.py), with a gthread that
    # turns accepting on and off (set_accept_enabled; older ones accept as they did). These
    # run on the main loop's thread.
    share: ConnectionShare | None = None
    _stepped_back_until = 0.0
    _accept_tried = False

    def init_process(self):
        if hasattr(_ThreadWorker, "set_accept_enabled"):
            self.share = ConnectionShare(self.age)
        try:
            super().init_process()
        finally:
            if self.share is not None:
                self.share.leave()

    def set_accept_enabled(self, enabled):
        if self.share is None:
            return super().set_accept_enabled(enabled)
        super().set_accept_enabled(enabled and time.monotonic() >= self._stepped_back_until)
        # Stepping back for a millisecond is still accepting, for the others: a process they
        # count out takes its share again at once, and they stop taking theirs.
        self.share.publish(self.nr_conns, enabled)

    def accept(self, *args):
        if self.share is not None:
            self._accept_tried = True
            now = time.monotonic()
            if self.share.step_back(self.nr_conns, now):
                self._stepped_back_until = now + STEP_BACK
                super().set_accept_enabled(False)
                return
        super().accept(*args)
        if self.share is not None:
            self.share.publish(self.nr_conns)

    def wait_for_and_dispatch_events(self, timeout):
        if self.share is None:
            return super().wait_for_and_dispatch_events(timeout)
        if self._stepped_back_until:
            timeout = max(0.0, min(timeout, self._stepped_back_until - time.monotonic()))
        self._accept_tried = False
        super().wait_for_and_dispatch_events(timeout)
        self.share.publish(self.nr_conns)  # its callbacks closed connections, or accepted
        if self._stepped_back_until and time.monotonic() >= self._stepped_back_until:
            self._stepped_back_until = 0.0
        elif not self._accept_tried and self._accepting:
            self.share.taken_elsewhere()  # nothing was waiting to be accepted


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
    os.environ[MULTIPROC_ENV] = made(path)
    # prometheus_client chooses where values live when it is imported, and the command line
    # (``serve``) imported it before the folder was set: choose again. The apps' metrics are
    # made after gunicorn forks (metrics.Metrics), so every one of them writes to the folder.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return path, created


def wipe_multiproc_dir(path: str, keep_live: bool = True) -> int:
    """Remove the sample files left by earlier runs. With ``keep_live``, files of processes
    still running are kept: the ``worker`` service shares the folder and may be running
    while the web service restarts. Returns the number of files removed."""
    removed = 0
    for name in glob.glob(os.path.join(path, "*.db")):
        match = re.search(r"_(\d+)\.db$", name)
        if keep_live and match and int(match.group(1)) != os.getpid() and alive(int(match.group(1))):
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
    from ..pipeline.deliver import start_embedded

    # Another WSGI application under this configuration (the benchmarks' no-op app and floors,
    # or ours wrapped in middleware) has no service here: nothing to start, and the web
    # process must still boot (a KeyError here made gunicorn exit).
    service = getattr(worker.wsgi, "extensions", {}).get("dolibarr_webhooks")
    if service is None:
        if _embedded_worker_asked():
            worker.log.warning("DOLIBARR_WEBHOOKS_EMBEDDED_WORKER is set but the application is not "
                               "dolibarr_webhooks.create_app(): no delivery worker started")
        return
    if service.settings["EMBEDDED_WORKER"]:
        start_embedded(service.delivery_worker())


def _embedded_worker_asked() -> bool:
    """What the service's settings say (read once per process, environment, .env and TOML)."""
    from ..settings import ConfigError, process_settings

    try:
        return bool(process_settings()["EMBEDDED_WORKER"])
    except ConfigError:
        return False


def check_before_forking(server, settings: Settings | None = None) -> None:
    """gunicorn's ``on_starting``, in its master: the settings read and the store reached (and
    migrated, with AUTO_MIGRATE) once, before any web process is forked. A bad setting or a
    store out of reach is then one line and exit status 1 (gunicorn prints the RuntimeError
    raised here as ``Error: ...``). Each process said it, and the master could add a traceback
    of its own: two processes failing at the same moment raise its HaltServer again while it
    halts. The web processes still stop on either (a store that goes in between).
    ``settings``: serve's, else this process's."""
    try:
        with _said_as(RuntimeError, settings):
            settings = settings or process_settings()
            store = Store.for_service(settings)
            try:
                if not settings["AUTO_MIGRATE"]:
                    store.engine.connect().close()  # not migrated: reached, at least
            finally:
                store.dispose()  # nothing open is forked
    except RuntimeError:
        server.cfg.on_exit(server)  # gunicorn stops without calling it: a metrics folder it made goes
        raise


def worker_timeout(request_deadline: float) -> int:
    """gunicorn's timeout for ``serve``: above the request deadline (a worker is never killed
    between a commit and its answer), 20 s with the default deadline of 10 s."""
    return max(20, math.ceil(request_deadline) + 10)


# ``serve`` may face Dolibarr (and anyone else) without a proxy in front: threads, so that
# clients sending their request slowly each hold one thread for seconds, while the others
# keep answering (tests/test_hostile.py: 20 such clients, legitimate POSTs answered within a second).
SERVE_THREADS = 16


def web_processes(cpus: int | None = None) -> int:
    """gunicorn worker processes, for ``serve`` and ``contrib/gunicorn.conf.py``: two per CPU
    (gunicorn's documentation starts from twice the cores plus one), at least 2 (one can be
    replaced while the other answers), at most 8.

    Two per CPU, not one: the threads of a process share one GIL, and the thread committing a
    batch takes it back after each system call of its commit and fsync, each time behind the
    other threads' parsing (up to the interpreter's switch interval, 5 ms). On SQLite it holds
    the file's writers' turn all the while, and every process waits for that turn. With two
    processes per core one runs Python while another commits: on 2 cores at concurrency 16,
    SQLite answered 1.03 to 1.35x the requests a second of one process per CPU (1.03x on a
    machine whose disk does not slow after a pause); PostgreSQL, whose processes share no
    turn, 0.95 to 1.04x, and 0.97x with 1.1 times the CPU a request and a p99 of 35 ms against
    26 (bench/processes.py, issue #15): contrib/README.rst suggests one per CPU there."""
    return max(2, min(2 * (cpus or os.cpu_count() or 1), 8))


def run(settings: Settings, bind: str, workers: int | None = None) -> None:
    """``dolibarr-webhooks serve``: gunicorn with the embedded defaults, for a first try. Its
    workers, forked from this process, build their app from ``settings``: read once, here.
    ``workers``: processes, ``web_processes()`` when None."""
    workers = workers or web_processes()
    from gunicorn.app.base import BaseApplication

    path, created = prepare_multiproc_dir()
    wipe_multiproc_dir(path)

    class Application(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "dolibarr_webhooks.web.gunicorn.ThreadWorker")
            self.cfg.set("threads", SERVE_THREADS)
            self.cfg.set("timeout", worker_timeout(settings["REQUEST_DEADLINE"]))
            self.cfg.set("graceful_timeout", 25)
            self.cfg.set("logger_class", RedactingLogger)
            self.cfg.set("child_exit", lambda _server, worker: mark_process_dead(worker.pid))
            self.cfg.set("post_worker_init", post_worker_init)
            self.cfg.set("on_starting", lambda server: check_before_forking(server, settings))
            if created:
                self.cfg.set("on_exit", lambda _server: remove_multiproc_dir(path))
            if "control_socket_disable" in self.cfg.settings:
                self.cfg.set("control_socket_disable", True)

        def load(self):
            from .app import create_app

            # serve said once what each process would announce (cli/serve.py's _announce).
            return create_app({"ANNOUNCE": False}, settings=settings)

    Application().run()
