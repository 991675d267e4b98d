"""Test helpers for dolibarr-webhooks and its plugins (a ``pytest11`` plugin: installed
with the core, its fixtures are available in every test suite).

Fixtures:
- ``dolibarr_event``: ``dolibarr_event("BILL_PAYED", dolibarr_url=..., **object_overrides)`` -> ``Event``
  built from the real-shaped sample body.
- ``webhooks_app``: an app on a temporary SQLite file with a known secret (``WEBHOOKS_TEST_SECRET``);
  ``webhooks_client``; ``webhooks_runner``. Override ``webhooks_config`` to add settings.
- ``deliver``: ``deliver(app)`` runs the worker in this process until nothing is due.

Helpers for end-to-end tests: ``fresh_venv`` builds a virtual environment with real
``pip install``s; ``running_service`` runs real gunicorn and the worker process;
``rst_code_blocks`` reads a README's examples, to run them as written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import venv
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

WEBHOOKS_TEST_SECRET = "test-secret-0123456789abcdef"


def make_event(code: str = "BILL_PAYED", *, dolibarr_url: str | None = "https://erp.example",
               source: str = "default", test: bool = False, **object_overrides: Any):
    """An ``Event`` from the sample body of ``code`` (any code: unknown ones get a minimal object)."""
    from .pipeline.parse import event_from_body
    from .samples import sample_body

    try:
        body = json.loads(sample_body(code))
    except KeyError:
        body = {"triggercode": code, "object": {"id": 1}}
    body["object"].update(object_overrides)
    return event_from_body(json.dumps(body).encode(), source=source, dolibarr_url=dolibarr_url, test=test)


@pytest.fixture
def dolibarr_event():
    return make_event


@pytest.fixture
def webhooks_config(tmp_path) -> dict[str, Any]:
    return {}


@pytest.fixture
def webhooks_app(tmp_path, webhooks_config, monkeypatch):
    from . import create_app

    monkeypatch.chdir(tmp_path)  # no stray .env, the default database lands here
    config = {"SECRET": WEBHOOKS_TEST_SECRET, "DATABASE_URL": f"sqlite:///{tmp_path / 'webhooks.sqlite3'}",
              "SQLITE_SYNCHRONOUS": "normal", "RETRY_JITTER": 0, "TESTING": True, **webhooks_config}
    app = create_app(config)
    yield app
    app.extensions["dolibarr_webhooks"].store.dispose()


@pytest.fixture
def webhooks_client(webhooks_app):
    return webhooks_app.test_client()


@pytest.fixture
def webhooks_runner(webhooks_app):
    return webhooks_app.test_cli_runner()


def deliver_until_idle(app, idle: float = 0.3) -> dict[str, Any]:
    """Run a worker in this process until nothing has been due for ``idle`` seconds; returns stats."""
    svc = app.extensions["dolibarr_webhooks"]
    svc.make_worker("test").run(stop_after_idle=idle)
    return svc.store.stats()


@pytest.fixture
def deliver():
    return deliver_until_idle


# -- real processes -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rst_code_blocks(text: str, language: str, section: str | None = None) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of the reStructuredText ``text``, dedented,
    in order; with ``section``, only those under that title (underlined with ``-``), up to the
    next such title. For tests that run a README's or a guide's examples as they are written."""
    if section is not None:
        found = re.search(rf"^{re.escape(section)}\n-+\n(.*?)(?=^[^\n]+\n-{{3,}}\n|\Z)", text, re.M | re.S)
        if found is None:
            raise LookupError(f"no section {section!r}")
        text = found.group(1)
    return [textwrap.dedent(block).strip() + "\n" for block in
            re.findall(rf"^\.\. code-block:: {re.escape(language)}\n\n((?:(?: +[^\n]*)?\n)+)", text, re.M)]


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; its value, or TimeoutError naming ``message``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout}s: {message() if callable(message) else message}")
        time.sleep(interval)


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextlib.contextmanager
def local_http_server(handler: type) -> Iterator[Any]:
    """A ``ThreadingHTTPServer`` on a free loopback port, served from a thread until the block
    ends: the fake remote systems of plugin tests (Slack, a receiver, Dolibarr's REST API)."""
    from http.server import ThreadingHTTPServer
    import threading

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fresh_venv(path: str | os.PathLike, *packages: str | os.PathLike, interpreter: str | None = None) -> Path:
    """A new virtual environment at ``path`` with ``packages`` pip-installed (``pip install``'s
    arguments: options such as ``--constraint FILE`` too); returns its python.
    ``interpreter``: of another Python than the running one."""
    path = Path(path)
    python = _new_venv(path, interpreter, with_pip=True)
    if packages:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *[str(p) for p in packages]], check=True, timeout=900)
    return python


def plugin_package(root: str | os.PathLike, name: str, source: str, version: str = "0.0.1") -> Path:
    """A pip-installable package ``dolibarr-webhooks-<name>`` whose one module
    ``dolibarr_webhooks_<name>`` holds ``source`` and is declared as plugin ``name`` in the
    ``dolibarr_webhooks.handlers`` entry point group, as a real plugin's is. Returns its folder."""
    from .plugins import ENTRY_POINT_GROUP

    package = Path(root) / f"dolibarr-webhooks-{name}"
    package.mkdir(parents=True)
    module = f"dolibarr_webhooks_{name}"
    (package / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "dolibarr-webhooks-{name}"
        version = "{version}"
        dependencies = ["dolibarr-webhooks"]

        [project.entry-points."{ENTRY_POINT_GROUP}"]
        {name} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
        """))
    (package / f"{module}.py").write_text(textwrap.dedent(source))
    return package


def overlay_venv(path: str | os.PathLike, interpreter: str | None = None) -> Path:
    """A new virtual environment at ``path`` that also sees every package of the running one
    (the core under test, its dependencies, pip, editable installs included); what is
    pip-installed into it lands in its own site-packages and comes first. Returns its python.
    ``interpreter``: another build of the running Python's version (the packages' compiled
    parts are built for that version), for the same packages under another interpreter.

    ``--system-site-packages`` would not do: run from inside a virtual environment (as
    ``.ci/run`` does), it links the base interpreter's packages, not this environment's.
    """
    python = _new_venv(Path(path), interpreter, with_pip=False)
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    parents = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    # addsitedir, not a bare path: it also reads the parent's .pth files (editable installs).
    (Path(own) / "_dolibarr_webhooks_overlay.pth").write_text(
        "".join(f"import site; site.addsitedir({parent!r})\n" for parent in parents))
    return python


def _new_venv(path: Path, interpreter: str | None, with_pip: bool) -> Path:
    """A new virtual environment at ``path``, of the running Python or of ``interpreter``;
    returns its python."""
    if interpreter is None:
        venv.EnvBuilder(with_pip=with_pip, clear=True).create(path)
    else:
        subprocess.run([interpreter, "-m", "venv", "--clear", *([] if with_pip else ["--without-pip"]), str(path)],
                       check=True, capture_output=True)
    return path / "bin" / "python"


class RunningService:
    """gunicorn (and optionally the worker) running from one environment, on loopback."""

    def __init__(self, python: Path, workdir: Path, env: dict[str, str], port: int) -> None:
        self.python = Path(python)
        self.bin = self.python.parent
        self.workdir = workdir
        self.env = env
        self.port = port
        self.secret = env["DOLIBARR_WEBHOOKS_SECRET"]
        self.url = f"http://127.0.0.1:{port}"
        self.webhook_url = f"{self.url}/webhook/{self.secret}"
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.workdir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(args, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes[name] = process
        return process

    def start_web(self, workers: int | None = 2, extra: list[str] = (), prefix: list[str] = ()) -> subprocess.Popen:
        """gunicorn; ``prefix`` runs it through another command (``setpriv ...``); ``workers``
        None: as many as its configuration file says."""
        count = ["-w", str(workers)] if workers is not None else []
        process = self.start("web", [*prefix, str(self.bin / "gunicorn"), "-b", f"127.0.0.1:{self.port}", *count,
                                     "--graceful-timeout", "10", *extra, "dolibarr_webhooks:create_app()"])
        wait_for_port(self.port, process=process)
        return process

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        return self.start(name, [str(self.bin / "dolibarr-webhooks"), "worker"])

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait(5)

    def post(self, code_or_body: str | bytes, path: str | None = None, **kwargs: Any):
        import requests

        from .samples import sample_body

        body = sample_body(code_or_body) if isinstance(code_or_body, str) else code_or_body
        headers = {"User-Agent": "Dolibarr geturl function", "Content-Type": "application/json",
                   **kwargs.pop("headers", {})}
        return requests.post(self.url + (path or f"/webhook/{self.secret}"), data=body, headers=headers,
                             timeout=kwargs.pop("timeout", 30), **kwargs)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "dolibarr-webhooks"), *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, check=check, timeout=120)

    def stats(self) -> dict[str, Any]:
        return json.loads(self.cli("stats", "--json").stdout)

    def wait_delivered(self, count: int, timeout: float = 30, plugin: str | None = None) -> dict[str, Any]:
        last: dict[str, Any] = {}

        def delivered() -> dict[str, Any] | None:
            last["stats"] = stats = self.stats()
            last["done"] = (stats["plugins"].get(plugin, {}).get("delivered", 0) if plugin
                            else stats["deliveries"]["delivered"])
            return stats if last["done"] >= count else None

        return wait_for(delivered, timeout, interval=0.2, message=lambda: (
            f"{last['done']} of {count} deliveries delivered: {last['stats']}\n" + self.logs(tail=4000)))

    def logs(self, tail: int | None = None) -> str:
        """Every log file of the service, whole (or its last ``tail`` characters)."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-(tail or 0):]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)


@contextlib.contextmanager
def running_service(python: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                    worker: bool = True, workers: int | None = 2, database_url: str | None = None,
                    gunicorn_args: Iterable[str] = (), web_prefix: Iterable[str] = ()) -> Iterator[RunningService]:
    """Real gunicorn on a free loopback port plus, by default, the worker process, on a
    temporary SQLite file (or ``database_url``). Stopped with SIGTERM on exit. ``web_prefix``
    runs gunicorn through another command (``setpriv ...``)."""
    python = Path(python or sys.executable)
    with tempfile.TemporaryDirectory(prefix="dolibarr-webhooks-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
        full_env.update({
            "DOLIBARR_WEBHOOKS_SECRET": WEBHOOKS_TEST_SECRET,
            "DOLIBARR_WEBHOOKS_DATABASE_URL": database_url or f"sqlite:///{workdir / 'webhooks.sqlite3'}",
            "DOLIBARR_WEBHOOKS_PORT": str(port),
            "DOLIBARR_WEBHOOKS_RETRY_JITTER": "0",
            "PYTHONUNBUFFERED": "1",
            # gunicorn's metrics folder is made here: removed with the rest when gunicorn is
            # killed (-9) before it could remove it.
            "TMPDIR": str(workdir),
        })
        full_env.update(env or {})
        service = RunningService(python, workdir, full_env, port)
        try:
            # Migrate once before several processes start, as a deployment would.
            service.cli("migrate")
            service.start_web(workers=workers, extra=list(gunicorn_args), prefix=list(web_prefix))
            if worker:
                service.start_worker()
            yield service
        finally:
            service.close()
