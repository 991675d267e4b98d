"""Helpers for the production tests: the contrib files rendered for a test run, a real
nginx in front of a real gunicorn, and Dolibarr-shaped requests."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from requests.adapters import HTTPAdapter

from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.store import Store
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET, free_port, wait_for, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
GUNICORN_CONF = CONTRIB / "gunicorn.conf.py"
NGINX_SITE = CONTRIB / "nginx" / "dolibarr-webhooks.conf"
SYSTEMD = CONTRIB / "systemd"
ENV_EXAMPLE = CONTRIB / "dolibarr-webhooks.env.example"
# The project's own reproduction of Dolibarr's request (tests/dolibarr/README.rst), and bodies
# captured from a real Dolibarr 22.0.4.
DOLIBARR_SENDER = ROOT / "tests" / "dolibarr" / "dolibarr_send.php"
CAPTURED = ROOT / "tests" / "data" / "captured-22.0.4"

DOLIBARR_HEADERS = {"User-Agent": "Dolibarr geturl function", "Accept": "*/*", "Content-Type": "application/json"}
# serve's worker class, for a gunicorn started by running_service.
THREAD_WORKER = ["-k", "dolibarr_webhooks.web.gunicorn.ThreadWorker"]


def require_tool(name: str, package: str) -> str:
    """The path of a system tool; in CI a missing one is a failure, elsewhere a skip."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        message = f"{name} is not installed (apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


NO_DAC = ["--bounding-set=-dac_override,-dac_read_search,-fowner",
          "--inh-caps=-dac_override,-dac_read_search,-fowner"]


def without_dac_override(tmp_path: Path) -> list[str]:
    """A command prefix that runs a process without the capabilities that let root ignore file
    permissions (tests run as root, in CI too): a chmod then stops its writes, as it stops
    the service's user in production."""
    setpriv = require_tool("setpriv", "util-linux")
    probe = tmp_path / "probe"
    probe.write_text("")
    probe.chmod(0o444)
    result = subprocess.run([setpriv, *NO_DAC, "sh", "-c", f"echo x >> {probe}"], capture_output=True, timeout=30)
    if result.returncode == 0 and os.geteuid() == 0:
        pytest.fail(f"setpriv did not take root's permission override away: {result.stderr!r}")
    return [setpriv, *NO_DAC]


def require_php() -> str:
    """PHP with its curl extension, which Dolibarr's request needs; in CI a missing one is a failure."""
    php = require_tool("php", "php-cli php-curl")
    if subprocess.run([php, "-r", "exit(extension_loaded('curl') ? 0 : 1);"], timeout=60).returncode:
        message = "PHP's curl extension is not installed (apt-get install -y php-curl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return php


def dolibarr_send(url: str, body: Path, *options: str) -> dict[str, Any]:
    """Post ``body`` to ``url`` as Dolibarr's getURLContent() does, with PHP's curl; returns the
    sender's report: ``success`` (Dolibarr's verdict), ``http_code``, ``curl_error_no``,
    ``request_head`` (as curl sent it), ``answer``. Options: ``--dolibarr=19|20|21|22|23``,
    ``--allow-localurl``, ``--prod``."""
    php = require_php()
    result = subprocess.run([php, str(DOLIBARR_SENDER), *options, url, str(body)], capture_output=True,
                            text=True, timeout=90)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["success"] == (result.returncode == 0), report
    return report


def production_env(**extra: str) -> dict[str, str]:
    """Environment for ``running_service``: gunicorn reads contrib/gunicorn.conf.py, as in production
    (options running_service passes on the command line, bind and workers, still win)."""
    env = {"GUNICORN_CMD_ARGS": f"-c {GUNICORN_CONF}"}
    env.update(extra)
    return env


# -- processes and sockets, from /proc -----------------------------------------------------------
def worker_pids(master: int) -> list[int]:
    """The pids of a gunicorn master's children: its workers."""
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def tcp_sockets() -> Iterator[tuple[int, int, str, str]]:
    """This machine's TCP sockets, as ``ss -tn`` reads them: (local port, remote port, state,
    inode), the state as the kernel writes it ("01" established, "0A" listening)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                yield (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), fields[3],
                       fields[9])


# -- TLS and nginx ----------------------------------------------------------------------------
def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    openssl = require_tool("openssl", "openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def render_nginx_site(folder: Path, upstream_port: int, https_port: int, http_port: int, cert: Path,
                      key: Path) -> str:
    """contrib/nginx/dolibarr-webhooks.conf with test ports, certificate and log paths; every
    directive else is the file's own. Fails loudly when a replaced line is no longer there."""
    text = NGINX_SITE.read_text()
    replacements = [
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen [::]:443 ssl;", "# (no IPv6 listener in the test)"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", "# (no IPv6 listener in the test)"),
        ("/etc/letsencrypt/live/webhooks.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/webhooks.example.com/privkey.pem", str(key)),
        ("/var/log/nginx/", f"{folder}/logs/"),
        ("/var/www/letsencrypt", f"{folder}/acme"),
    ]
    for old, new in replacements:
        assert old in text, f"{NGINX_SITE.name} no longer contains {old!r}: update render_nginx_site"
        text = text.replace(old, new)
    return text


def nginx_main_conf(folder: Path, site: Path) -> str:
    # Run as root (CI containers), nginx's workers would switch to 'nobody', who cannot enter
    # pytest's private temporary folders.
    user = "user root;" if os.geteuid() == 0 else ""
    temp = folder / "temp"
    return f"""{user}
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/logs/main-error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    access_log off;
    include {site};
}}
"""


class Nginx:
    def __init__(self, folder: Path, upstream_port: int, edit: Callable[[str], str] | None = None) -> None:
        """``edit``: a change to the rendered site (the benchmarks take its flood limit out)."""
        self.binary = require_tool("nginx", "nginx-light")
        self.folder = folder
        for sub in ("logs", "temp", "acme"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self_signed_certificate(folder)
        self.https_port, self.http_port = free_port(), free_port()
        site = folder / "dolibarr-webhooks.conf"
        text = render_nginx_site(folder, upstream_port, self.https_port, self.http_port, self.cert, self.key)
        site.write_text(edit(text) if edit else text)
        self.conf = folder / "nginx.conf"
        self.conf.write_text(nginx_main_conf(folder, site))
        self.https = f"https://127.0.0.1:{self.https_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        startup_log = self.folder / "logs" / "startup.log"
        return [self.binary, "-p", str(self.folder), "-c", str(self.conf), "-e", str(startup_log), *args]

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        with open(self.folder / "logs" / "stderr.log", "ab") as log:
            self.process = subprocess.Popen(self.command("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for_port(self.https_port, process=self.process)
        wait_for_port(self.http_port, process=self.process)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted((self.folder / "logs").glob("*.log"))}

    def session(self, source_address: str | None = None) -> requests.Session:
        """A client that trusts the test certificate; ``source_address`` picks another loopback
        address (127.0.0.2) to look like a different client than nginx itself."""
        session = requests.Session()
        # Not the environment's CA bundle (REQUESTS_CA_BUNDLE would win over verify) nor its proxies.
        session.trust_env = False
        session.verify = str(self.cert)
        if source_address:
            adapter = SourceAddressAdapter(source_address)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        return session


class SourceAddressAdapter(HTTPAdapter):
    def __init__(self, source_address: str, **kwargs: Any) -> None:
        self.source_address = source_address
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source_address, 0)
        super().init_poolmanager(*args, **kwargs)


@contextlib.contextmanager
def running_nginx(folder: Path, upstream_port: int) -> Iterator[Nginx]:
    nginx = Nginx(folder, upstream_port)
    result = nginx.test_config()
    assert result.returncode == 0, result.stderr
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


# -- Dolibarr-shaped bodies -------------------------------------------------------------------
def body(code: str, object_id: int) -> bytes:
    """A sample body made unique (the dedup window would call identical ones duplicates)."""
    data = json.loads(sample_body(code))
    data["object"]["id"] = object_id
    return json.dumps(data).encode()


class Load:
    """``clients`` threads posting unique bodies, each client on its own kept-alive connection,
    until ``stop()``: the ids acknowledged, in order, every failure, and the slowest answer.
    ``session``: makes each client's session (nginx.session for a test certificate);
    ``pause``: seconds each client waits between its posts (under nginx's flood limit)."""

    def __init__(self, url: str, clients: int = 8, session: Callable[[], requests.Session] = requests.Session,
                 pause: float = 0.0) -> None:
        self.url, self.acknowledged, self.failures, self.slowest = url, [], [], 0.0
        self._numbers, self._lock, self._stop = itertools.count(1), threading.Lock(), threading.Event()
        self._session, self._pause = session, pause
        self._pool = ThreadPoolExecutor(max_workers=clients)
        self._clients = [self._pool.submit(self._client) for _ in range(clients)]

    def _client(self) -> None:
        session = self._session()
        while not self._stop.wait(self._pause):
            with self._lock:
                number = next(self._numbers)
            started = time.monotonic()
            try:
                response = session.post(self.url, data=body("BILL_PAYED", number), headers=DOLIBARR_HEADERS,
                                        timeout=10)
            except requests.RequestException as exc:
                with self._lock:
                    self.failures.append(type(exc).__name__)
                time.sleep(0.01)
                continue
            with self._lock:
                self.slowest = max(self.slowest, time.monotonic() - started)
                if 200 <= response.status_code < 300:
                    self.acknowledged.append(response.json()["id"])
                else:
                    self.failures.append(str(response.status_code))

    def stop(self) -> None:
        self._stop.set()
        for client in self._clients:
            client.result(timeout=30)
        self._pool.shutdown()


def missing_from_store(service, event_ids: list[str]) -> list[str]:
    store = Store(service.env["DOLIBARR_WEBHOOKS_DATABASE_URL"])
    try:
        return [event_id for event_id in event_ids if store.show(event_id) is None]
    finally:
        store.dispose()


def php_json(data: Any) -> bytes:
    """JSON as PHP's json_encode writes it: ASCII only, '/' escaped."""
    return json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode()


def big_invoice(size: int, ref: str = "(PROV4242)") -> tuple[bytes, int]:
    """A BILL_VALIDATE body of at least ``size`` bytes: the sample invoice with its line
    repeated, as Dolibarr 20 to 22 send every line whole. Returns the body and its line count."""
    body = json.loads(sample_body("BILL_VALIDATE"))
    line = body["object"]["lines"][0]
    one = len(php_json(line))
    count = size // one + 1
    lines = []
    for number in range(count):
        copy = dict(line)
        copy["id"] = copy["rowid"] = 100000 + number
        copy["rang"] = number + 1
        lines.append(copy)
    body["object"]["lines"] = lines
    body["object"]["ref"] = ref
    return php_json(body), count


def dolibarr_post(session: requests.Session, url: str, body: bytes, **kwargs: Any) -> requests.Response:
    headers = dict(DOLIBARR_HEADERS)
    if len(body) > 1024 * 1024:
        headers["Expect"] = "100-continue"  # what curl adds for bodies over 1 MiB
    headers.update(kwargs.pop("headers", {}))
    return session.post(url, data=body, headers=headers, timeout=kwargs.pop("timeout", 30), allow_redirects=False,
                        **kwargs)


def service_logs(service) -> str:
    """Every line the service's processes wrote (RunningService.logs() keeps only the ends)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(service.workdir.glob("*.log")))


def cli_json(service, *args: str) -> Any:
    return json.loads(service.cli(*args, "--json").stdout)


def python_bin() -> Path:
    return Path(sys.executable).parent


def post_kept_alive(connection: http.client.HTTPConnection, object_id: int) -> dict:
    """The BILL_VALIDATE sample, made unique by ``object_id``, posted on ``connection`` (kept
    alive for the next one): its 200 answer."""
    body = json.loads(sample_body("BILL_VALIDATE"))
    body["object"]["id"] = object_id
    connection.request("POST", f"/webhook/{WEBHOOKS_TEST_SECRET}", json.dumps(body),
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    return answer


class PlainApp:
    """A WSGI application of a test's own under a real gunicorn: its address, its first answer
    to ``GET /``, and once gunicorn has stopped, what it printed."""

    url: str
    answer: requests.Response
    output: str = ""


@contextlib.contextmanager
def plain_app_under_gunicorn(folder: Path, source: str, *args: str, **env: str) -> Iterator[PlainApp]:
    """``source`` as the module ``plain_app`` (its callable ``app``), served by one gunicorn
    process with ``args``, outside the service's settings but ``env``; entered once it answers
    ``GET /`` with a 200."""
    (folder / "plain_app.py").write_text(source)
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    environ.update(env, PYTHONPATH=str(folder))
    process = subprocess.Popen([str(python_bin() / "gunicorn"), *args, "-b", f"127.0.0.1:{port}", "-w", "1",
                                "plain_app:app"], env=environ, cwd=folder,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = PlainApp()
    served.url = f"http://127.0.0.1:{port}/"
    try:
        served.answer = wait_for(lambda: _answer_or_none(served.url), timeout=20, interval=0.2,
                                 message=lambda: f"gunicorn exited {process.poll()}" if process.poll() is not None
                                 else "no answer")
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        served.output = process.communicate(timeout=30)[0]


def _answer_or_none(url: str) -> requests.Response | None:
    try:
        answer = requests.get(url, timeout=2)
    except requests.RequestException:
        return None
    return answer if answer.status_code == 200 else None
