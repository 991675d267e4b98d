"""Shared pieces of the benchmarks: servers (ours, and the Node receiver of ``node_receiver/``),
the wrk load generator, CPU accounting, throw-away PostgreSQL databases and a virtual
environment with a plugin pip-installed.

Everything listens on 127.0.0.1 only. Nothing here asserts a time: the scripts print
figures measured side by side in one run, and the reader compares them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import (WEBHOOKS_TEST_SECRET, RunningService, free_port, fresh_venv, overlay_venv,
                                       plugin_package, wait_for_port)

BENCH_DIR = Path(__file__).resolve().parent
POSTGRES_ADMIN_URL = os.environ.get("DOLIBARR_WEBHOOKS_BENCH_POSTGRES",
                                    "postgresql://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
# The object id of the BILL_VALIDATE sample: each request gets its own, so no two bodies are
# equal and none is taken for a duplicate (the dedup window is 10 minutes by default).
OBJECT_ID_MARK = b'"id":311'


def unique_body(body: bytes, object_id: int) -> bytes:
    """The BILL_VALIDATE sample ``body`` with ``object_id`` in place of its own."""
    return body.replace(OBJECT_ID_MARK, b'"id":%d' % object_id, 1)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_ms(call, repeat: int) -> float:
    """Median wall milliseconds of ``repeat`` calls of ``call``."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *cells)]
    line = lambda row: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


# -- CPU accounting --------------------------------------------------------------------------
def _proc_stat(pid: int, reaped: bool = False) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None if it is gone; ``reaped``: with the
    CPU of its children that have exited and been waited for."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return int(fields[1]), ticks / CLK_TCK


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by the living processes of the tree rooted at ``root``."""
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _proc_stat(int(name))
            if found:
                stats[int(name)] = found
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _cpu) in stats.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(stats[pid][1] for pid in tree if pid in stats)


def postgres_cpu() -> float:
    """CPU seconds used so far by the processes of a PostgreSQL server on this machine, its
    backends included: what the database did for a client, taken as a difference. A backend
    that has exited is counted in its postmaster's children's time (a worker's pool closes the
    connections it has beyond its size: at 16 lanes, backends came and went during a drain)."""
    total = 0.0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as fh:
                    if fh.read().strip() != "postgres":
                        continue
            except OSError:
                continue
            found = _proc_stat(int(name), reaped=True)
            total += found[1] if found else 0.0
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


# -- wrk -------------------------------------------------------------------------------------
WRK_LUA = r"""
-- Posts the real BILL_VALIDATE body as Dolibarr does, with a unique object id per request.
local f = assert(io.open(%(body_path)s, "rb"))
local body = f:read("*a")
f:close()
local s, e = body:find(%(mark)s, 1, true)
local prefix, suffix = body:sub(1, s - 1), body:sub(e + 1)
wrk.method = "POST"
wrk.headers["User-Agent"] = "Dolibarr geturl function"
wrk.headers["Accept"] = "*/*"
wrk.headers["Content-Type"] = "application/json"
%(connection_header)slocal counter = 0
local base = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  base = %(run_base)d + tid * 10000000
end

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, prefix .. '"id":' .. string.format("%%.0f", base + counter) .. suffix)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d,"mean":%%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    loadgen_cpu: float = 0.0  # share of the machine used by wrk (0..1)
    server_cpu: float = 0.0  # share of the machine used by the server's process tree
    machine_cpu: float = 0.0  # share of the machine busy, everything included

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def server_cpu_ms(self) -> float:
        """Server CPU per answered request, in milliseconds (all cores counted)."""
        return self.server_cpu * NCPU * self.seconds * 1000 / self.requests if self.requests else float("nan")

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


class Wrk:
    """Runs ``wrk`` with one Lua script that posts the sample body (unique per request)."""

    def __init__(self, workdir: Path, code: str = "BILL_VALIDATE", new_connections: bool = False) -> None:
        """``new_connections``: each request on a connection of its own, as Dolibarr's curl
        opens one per event (with ``Connection: close``, the server closes it after the answer,
        and wrk connects again)."""
        if not shutil.which("wrk"):
            sys.exit("wrk is not installed: apt-get update && apt-get install -y wrk")
        body = sample_body(code)
        if OBJECT_ID_MARK not in body:
            raise ValueError(f"the {code} sample has no {OBJECT_ID_MARK!r} to make bodies unique")
        self.body_size = len(body)
        self.workdir = workdir
        self.body_path = workdir / f"{code}.json"
        self.body_path.write_bytes(body)
        self.new_connections = new_connections
        self.runs = 0
        self.sent = 0  # responses received over all runs (warm-ups included)

    def _script(self) -> Path:
        self.runs += 1
        path = self.workdir / f"run{self.runs}.lua"
        lua = WRK_LUA % {"body_path": json.dumps(str(self.body_path)), "mark": json.dumps(OBJECT_ID_MARK.decode()),
                         "run_base": self.runs * 1_000_000_000,
                         "connection_header": 'wrk.headers["Connection"] = "close"\n' if self.new_connections else ""}
        path.write_text(lua)
        return path

    def run(self, url: str, connections: int, seconds: float, server_pid: int | None = None,
            threads: int = 1) -> WrkResult:
        script = self._script()
        args = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                "--timeout", "10s", "-s", str(script), url]
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = tree_cpu(server_pid) if server_pid else 0.0
        busy0, total0 = machine_busy()
        started = time.monotonic()
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
        wall = time.monotonic() - started
        busy1, total1 = machine_busy()
        server_after = tree_cpu(server_pid) if server_pid else 0.0
        after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        data = json.loads(line[len("BENCH_JSON "):])
        self.sent += data["requests"]
        loadgen = (after_children.ru_utime - before_children.ru_utime
                   + after_children.ru_stime - before_children.ru_stime)
        return WrkResult(
            requests=data["requests"], seconds=data["duration_us"] / 1e6,
            errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
            p50_ms=data["p50"] / 1000, p90_ms=data["p90"] / 1000, p99_ms=data["p99"] / 1000,
            max_ms=data["max"] / 1000,
            loadgen_cpu=loadgen / wall / NCPU,
            server_cpu=(server_after - server_before) / wall / NCPU,
            machine_cpu=(busy1 - busy0) / max(1, total1 - total0),
        )


def interleaved_options(parser, concurrency: str, rounds: int, duration: int) -> None:
    """The options of a script that compares servers in interleaved rounds (``interleaved``):
    the store, the connections, the rounds and the seconds of each point, with its defaults.
    The parsed ``concurrency`` is a list of ints."""
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--concurrency", default=concurrency, type=lambda text: [int(c) for c in text.split(",")],
                        help=f"connections, comma-separated (default {concurrency})")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--duration", type=int, default=duration, help="seconds measured per point")


def interleaved(servers: list[tuple[str, Server]], concurrencies: list[int], rounds: int, duration: int,
                wrk: Wrk, warmup: int = 0) -> dict[tuple[str, int], list[WrkResult]]:
    """Two or more servers posted to in turn at each concurrency, over ``rounds`` rounds: on a
    machine whose speed moves more between rounds than between two points taken a few seconds
    apart, the figure to read is the ratio of each round (``interleaved_report``).
    ``warmup``: seconds posted to a server before each of its points; 0: one second to each at
    the highest concurrency, before the first round only."""
    if not warmup:
        for _label, server in servers:
            wrk.run(server.webhook_url, max(concurrencies), 1)
    results: dict[tuple[str, int], list[WrkResult]] = {}
    for round_ in range(1, rounds + 1):
        for connections in concurrencies:
            for label, server in servers:
                if warmup:
                    wrk.run(server.webhook_url, connections, warmup)
                result = wrk.run(server.webhook_url, connections, duration, server_pid=server.web_pid)
                results.setdefault((label, connections), []).append(result)
                log(f"round {round_} c={connections} {label}: {result.rps:.0f} req/s, "
                    f"{result.server_cpu_ms:.2f} ms cpu/req, p50 {result.p50_ms:.2f} ms")
    return results


def interleaved_report(results: dict[tuple[str, int], list[WrkResult]], labels: list[str],
                       concurrencies: list[int], column: str) -> str:
    """``interleaved``'s medians (``column``: what the labels name), then each server against
    the first: the medians of the per-round ratios of req/s (with their spread), CPU per
    request and p50 (a round with nothing to divide by left out)."""
    rows = []
    for connections in concurrencies:
        for label in labels:
            runs = results[(label, connections)]
            rows.append([label, connections, f"{median([r.rps for r in runs]):.0f}",
                         f"{median([r.server_cpu_ms for r in runs]):.3f}", f"{median([r.p50_ms for r in runs]):.2f}",
                         f"{median([r.p99_ms for r in runs]):.1f}"])
    lines = [table(rows, [column, "conc", "req/s", "server cpu ms/req", "p50 ms", "p99 ms"]), ""]
    for connections in concurrencies:
        first = results[(labels[0], connections)]
        for label in labels[1:]:
            pairs = list(zip(results[(label, connections)], first))
            rps = [b.rps / a.rps for b, a in pairs if a.rps]
            cpu = median([b.server_cpu_ms / a.server_cpu_ms for b, a in pairs if a.server_cpu_ms])
            p50 = median([b.p50_ms / a.p50_ms for b, a in pairs if a.p50_ms])
            lines.append(f"{label} / {labels[0]} at c={connections}: req/s x{median(rps):.2f} (min {min(rps):.2f}, "
                         f"max {max(rps):.2f}), cpu per request x{cpu:.2f}, p50 x{p50:.2f} "
                         f"(medians of the per-round ratios)")
    return "\n".join(lines)


# -- a paced client ----------------------------------------------------------------------------
def post_once(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST on a new connection, as Dolibarr posts: (status, response body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"User-Agent": "Dolibarr geturl function",
                                                       "Accept": "*/*", "Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def paced_posts(port: int, path: str, body: bytes, rate: float, count: int, id_base: int) -> list[float]:
    """Seconds each POST took, ``count`` posts at ``rate`` per second, one at a time on a new
    connection each (as Dolibarr posts), each body with its own object id. A post that leaves
    late because the previous one was slow is still timed from its own start."""
    latencies = []
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        unique = unique_body(body, id_base + i)
        sent = time.perf_counter()
        status, _ = post_once(port, path, unique)
        latencies.append(time.perf_counter() - sent)
        if not 200 <= status < 300:
            raise RuntimeError(f"POST answered {status}")
    return latencies


# -- servers ---------------------------------------------------------------------------------
PRODUCTION_CONFIG = BENCH_DIR.parent / "contrib" / "gunicorn.conf.py"


@dataclass(frozen=True)
class GunicornSettings:
    """One set of gunicorn settings, given identically to every target of a comparison:
    command-line options, or a configuration file (``contrib/gunicorn.conf.py``, the
    production settings) whose values the options given here override."""

    workers: int | None = 2  # None: the configuration file's
    worker_class: str | None = "sync"
    threads: int = 1
    config: Path | None = None

    @classmethod
    def serve(cls, workers: int | None = None) -> GunicornSettings:
        """What ``dolibarr-webhooks serve`` runs: its worker class, threads and processes."""
        from dolibarr_webhooks.web.gunicorn import SERVE_THREADS, web_processes

        return cls(workers or web_processes(), "dolibarr_webhooks.web.gunicorn.ThreadWorker", SERVE_THREADS)

    def args(self, port: int, app: str, config: Path | None = None) -> list[str]:
        config = config or self.config
        args = ["-c", str(config)] if config else []
        args += ["-b", f"127.0.0.1:{port}"]
        if self.workers:
            args += ["-w", str(self.workers)]
        if self.worker_class:
            args += ["-k", self.worker_class]
        if not self.config:
            args += ["--graceful-timeout", "10"]
        if self.threads > 1 or self.worker_class in ("gthread", "dolibarr_webhooks.web.gunicorn.ThreadWorker"):
            args += ["--threads", str(self.threads)]
        return args + [app]

    @classmethod
    def from_spec(cls, spec: str) -> GunicornSettings:
        """``PROCESSESxTHREADS`` under serve's worker class, or ``sync:PROCESSES`` (our
        ``SyncWorker``: one request at a time, no thread between the accept and the answer)."""
        kind, _, processes = spec.lower().rpartition(":")
        if kind == "sync":
            return cls(int(processes), "dolibarr_webhooks.web.gunicorn.SyncWorker", 1)
        count, threads = (int(n) for n in spec.lower().split("x"))
        return replace(cls.serve(count), threads=threads)

    def describe(self) -> str:
        if self.config:
            config = self.config
            if config.is_relative_to(BENCH_DIR.parent):
                config = config.relative_to(BENCH_DIR.parent)
            return (f"-c {config}" + (f" -w {self.workers}" if self.workers else "")
                    + (f" -k {self.worker_class}" if self.worker_class else ""))
        extra = f", {self.threads} threads each" if self.threads > 1 else ""
        return f"{self.workers} {self.worker_class} workers{extra}"


def service_env(database_url: str, workdir: Path, **settings: str) -> dict[str, str]:
    """The environment ``running_service`` gives the product, plus ``settings``
    (names without the ``DOLIBARR_WEBHOOKS_`` prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOLIBARR_WEBHOOKS_")}
    env.update({
        "DOLIBARR_WEBHOOKS_SECRET": WEBHOOKS_TEST_SECRET,
        "DOLIBARR_WEBHOOKS_DATABASE_URL": database_url,
        "DOLIBARR_WEBHOOKS_RETRY_JITTER": "0",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({"DOLIBARR_WEBHOOKS_" + k: v for k, v in settings.items()})
    return env


class Server(RunningService):
    """``RunningService`` with the gunicorn command line built by ``GunicornSettings``,
    so the product and the no-op app get exactly the same settings."""

    def start_gunicorn(self, gunicorn: GunicornSettings, app: str) -> subprocess.Popen:
        process = self.start("web", [str(self.bin / "gunicorn"), *gunicorn.args(self.port, app)])
        wait_for_port(self.port, process=process)
        return process

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            return super().cli(*args, check=check)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"dolibarr-webhooks {' '.join(args)} failed:\n{exc.stderr}") from None

    worker_settings: dict[str, str] = {}

    def start_worker(self, name: str = "worker") -> subprocess.Popen:
        web_env, self.env = self.env, {**self.env, **{"DOLIBARR_WEBHOOKS_" + k: v
                                                      for k, v in self.worker_settings.items()}}
        try:
            return super().start_worker(name)
        finally:
            self.env = web_env

    @property
    def web_pid(self) -> int:
        return self.processes["web"].pid


def path_first(env: dict[str, str], *folders: Path | None) -> dict[str, str]:
    """``env`` with ``folders`` (those not None) first on ``PYTHONPATH``: another revision's core
    (``core_at``) before the installed one, ``bench/`` for its own apps."""
    path = os.pathsep.join(filter(None, [*(str(folder) for folder in folders if folder), env.get("PYTHONPATH")]))
    return {**env, "PYTHONPATH": path} if path else dict(env)


@contextlib.contextmanager
def product_server(gunicorn: GunicornSettings, database_url: str | None = None, worker: bool = False,
                   python: Path | None = None, worker_settings: dict[str, str] | None = None,
                   core: Path | None = None, **settings: str) -> Iterator[Server]:
    """The real product: ``gunicorn 'dolibarr_webhooks:create_app()'`` (and the worker process).
    ``worker_settings`` are settings of the worker process only; ``core`` runs
    another version of the package (see ``core_at``) instead of the installed one."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-") as tmp:
        workdir = Path(tmp)
        url = database_url or f"sqlite:///{workdir / 'webhooks.sqlite3'}"
        # Only the plugins asked for: whatever else is installed on the machine stays out.
        settings.setdefault("PLUGINS", "log")
        server = Server(Path(python or sys.executable), workdir, service_env(url, workdir, **settings), free_port())
        server.worker_settings = dict(worker_settings or {})
        server.env = path_first(server.env, core)  # first, before the installed (editable) package
        try:
            server.cli("migrate")  # once, before several processes start, as a deployment does
            server.start_gunicorn(gunicorn, "dolibarr_webhooks:create_app()")
            if worker:
                server.start_worker()
            yield server
        finally:
            server.close()


@contextlib.contextmanager
def noop_server(gunicorn: GunicornSettings, app: str = "noop_app:app", route: str = "",
                extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """``bench/noop_app.py`` (or another app of ``bench/``, the webhook URL under ``route``)
    under the same gunicorn settings."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-noop-") as tmp:
        workdir = Path(tmp)
        env = service_env("sqlite:///unused", workdir)
        env.update(extra_env or {})
        env = path_first(env, BENCH_DIR)
        env["BENCH_SPOOL_DIR"] = tmp
        server = Server(Path(sys.executable), workdir, env, free_port())
        if route:
            server.webhook_url = f"{server.url}/{route}/webhook/{server.secret}"
        try:
            server.start_gunicorn(gunicorn, app)
            yield server
        finally:
            server.close()


@contextlib.contextmanager
def least_durable_server(gunicorn: GunicornSettings, kind: str, network_delay: float = 0.0,
                         grouped: bool = False) -> Iterator[Server]:
    """Issue #15's least durable Flask receiver of store ``kind`` (``bench/floor_app.py``:
    ``json.loads``, then the raw body INSERTed, autocommit) under the same gunicorn settings;
    on PostgreSQL into a throw-away database of its own, reached through ``delay_proxy.py``
    with ``network_delay``. ``grouped``: that receiver committing the bodies of a process's
    waiting requests together (its ``-grouped`` route)."""
    route = f"{'sqlite' if kind == 'sqlite' else 'postgres'}-{'grouped' if grouped else 'insert'}"
    if kind == "sqlite":
        with noop_server(gunicorn, "floor_app:app", route) as server:
            yield server
        return
    from delay_proxy import delayed

    with database("postgresql") as url, delayed(url, network_delay) as reached, noop_server(
            gunicorn, "floor_app:app", route,
            extra_env={"BENCH_POSTGRES_URL": reached.replace("+psycopg", "")}) as server:
        yield server


NODE_RECEIVER = BENCH_DIR / "node_receiver"


def node_unavailable() -> str | None:
    """Why ``bench/node_receiver`` cannot run on this machine, or None. Installs its packages
    (``npm ci``, from its lock file) when they are not there yet."""
    missing = [tool for tool in ("node", "npm") if not shutil.which(tool)]
    if missing:
        return f"{' and '.join(missing)} not installed: apt-get install -y nodejs npm"
    if not (NODE_RECEIVER / "node_modules").is_dir():
        log("npm ci in bench/node_receiver (its packages are not installed yet)")
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_RECEIVER, capture_output=True,
                              text=True, timeout=600)
        if done.returncode:
            return f"npm ci failed in bench/node_receiver:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    return None


def node_express_version() -> str:
    return json.loads((NODE_RECEIVER / "package.json").read_text())["dependencies"]["express"]


@contextlib.contextmanager
def node_server() -> Iterator[Server]:
    """``bench/node_receiver/server.js``, the Node/Express receiver that stores nothing: one
    process, its stdout (a line and the whole body per request) sent to /dev/null, its errors
    to ``web.log``. Call ``node_unavailable`` first."""
    with tempfile.TemporaryDirectory(prefix="dw-bench-node-") as tmp:
        workdir = Path(tmp)
        server = Server(Path(sys.executable), workdir, service_env("sqlite:///unused", workdir), free_port())
        with open(workdir / "web.log", "ab") as errors:  # the child keeps its own descriptor
            server.processes["web"] = process = subprocess.Popen(
                ["node", "server.js", str(server.port)], cwd=NODE_RECEIVER, env=server.env,
                stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True)
        try:
            wait_for_port(server.port, process=process)
            yield server
        finally:
            server.close()


def core_at(revision: str, dest: Path) -> Path:
    """The ``dolibarr_webhooks`` package of this repository at ``revision`` (read with
    ``git archive``, nothing checked out), for a before/after comparison. Returns the folder
    to put first on ``PYTHONPATH``."""
    repo = BENCH_DIR.parent
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", revision, "dolibarr_webhooks"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


# -- PostgreSQL ------------------------------------------------------------------------------
def postgres_admin(statement: str) -> None:
    """Run one statement on the local PostgreSQL as its administrator, in autocommit."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A throw-away database on the local PostgreSQL, dropped afterwards. Its URL is the admin
    URL's with the database renamed, its query kept (``?host=/var/run/postgresql``: the
    server's Unix socket instead of TCP)."""
    from dolibarr_webhooks.store import with_database

    name = "dw_bench_" + uuid.uuid4().hex[:10]
    postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(POSTGRES_ADMIN_URL, name)
    finally:
        postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_writes(postgres: bool) -> float:
    """Write out what earlier points left in memory (the kernel's dirty pages, and PostgreSQL's
    dirty buffers with ``CHECKPOINT`` when ``postgres``), so that the next point's tail is its
    own: a floor INSERTing 15 KB bodies leaves 50 MB and more that the kernel and the
    checkpointer would otherwise write during whichever point comes next. Returns the seconds
    it took."""
    started = time.monotonic()
    if postgres:
        postgres_admin("CHECKPOINT")
    os.sync()
    return time.monotonic() - started


def settle(store) -> None:
    """After a bulk fill, a store as if it had grown slowly: checkpoints and autovacuum keep up
    with a year of rows, while a bulk fill leaves a gigabyte of WAL (or unanalysed tables) that
    the first commits after it would pay for, and the pages it and the VACUUM dirtied, which
    the kernel and PostgreSQL's checkpointer would write during the next point."""
    import sqlite3

    if store.is_postgres:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with contextlib.closing(sqlite3.connect(store.engine.url.database, timeout=60)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    flush_writes(store.is_postgres)


def receiver(url: str):
    """The service of an app on ``url`` (plugin ``log``) and a source of unique BILL_VALIDATE
    events, for storing events through the receiver's own ingest without HTTP."""
    import logging

    from dolibarr_webhooks import create_app

    app = create_app({"SECRET": WEBHOOKS_TEST_SECRET, "DATABASE_URL": url, "PLUGINS": "log"})
    logging.getLogger("dolibarr_webhooks").setLevel(logging.WARNING)
    service = app.extensions["dolibarr_webhooks"]
    source = next(iter(service.sources.values()))
    body = sample_body("BILL_VALIDATE")

    def events(start: int, count: int):
        for number in range(start, start + count):
            yield service.event_from_body(unique_body(body, number), source)
    return service, events


def sqlite_counters(server: RunningService):
    """A function reading the group commit's counters (``group_commit.read_counters``) of the
    server's store, or None when the store is not an SQLite file."""
    from dolibarr_webhooks.store import sqlite_path
    from dolibarr_webhooks.store.group_commit import read_counters

    path = sqlite_path(server.env.get("DOLIBARR_WEBHOOKS_DATABASE_URL", ""))
    return (lambda: read_counters(path)) if path else None


def in_process_product(url: str, **settings: str):
    """The product as shipped, in this process, for Flask's test client: ``(app, client,
    webhook path)``; plugin ``log``, the access log on (INFO, as in production). Its lines go
    to this process's stderr, as they go to journald under systemd (the log's handler writes
    to whatever ``sys.stderr`` is): the scripts run this in a child whose stderr they read."""
    from dolibarr_webhooks import create_app

    app = create_app({"SECRET": WEBHOOKS_TEST_SECRET, "DATABASE_URL": url, "PLUGINS": "log", **settings})
    return app, app.test_client(), f"/webhook/{WEBHOOKS_TEST_SECRET}"


@contextlib.contextmanager
def database(kind: str) -> Iterator[str | None]:
    """``None`` (each server makes its own SQLite file) or a throw-away PostgreSQL URL."""
    if kind == "sqlite":
        yield None
    elif kind == "postgresql":
        with postgres_database() as url:
            yield url
    else:
        raise ValueError(f"unknown database {kind!r}")


# -- a plugin installed through its real entry point -----------------------------------------
CONSOLE_SCRIPT = """#!{python}
import sys
from {module} import {func}
if __name__ == "__main__":
    sys.exit({func}())
"""


def plugin_venv(root: Path, name: str, source: str) -> Path:
    """A virtual environment that sees the installed core (``overlay_venv``) and has the
    one-module plugin ``name`` pip-installed, declared in the ``dolibarr_webhooks.handlers`` group.
    Returns the environment's python."""
    package = plugin_package(root, name, source)
    env_dir = root / f"venv-{name}"
    python = overlay_venv(env_dir)
    # pip and the core come from the running environment; pip fetches only the build backend.
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                           str(package)], timeout=300, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"pip install of the {name} plugin failed:\n{done.stdout}\n{done.stderr}")
    return _own_console_scripts(python)


_LOOP = ("import sys, time\n"
         "best = None\n"
         "for _ in range(3):\n"
         "    start = time.perf_counter(); x = 0\n"
         "    for i in range(10_000_000): x += i\n"
         "    took = time.perf_counter() - start; best = took if best is None else min(best, took)\n"
         "print('Python %s at %s: 10M additions in %.2f s' % (sys.version.split()[0], sys.base_prefix, best))")


def interpreter(python: Path | str = sys.executable) -> str:
    """The interpreter's version, where it lives, and how fast it runs a loop of Python: how it
    was built moves every figure of a receiver written in it (``interpreters.py``)."""
    return subprocess.run([str(python), "-c", _LOOP], capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def interpreter_venv(root: Path, other: str) -> Path:
    """A virtual environment of the interpreter ``other`` for the product's servers; returns its
    python. Another build of the running Python's version sees the running environment's
    packages (``overlay_venv``): the same product and dependencies, down to their compiled
    parts, under another interpreter. Another version (3.13 against 3.11, say) gets the same
    versions of the same packages, from PyPI for that version (the compiled parts are built
    for each), and this checkout's core, editable."""
    found = subprocess.run([other, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, timeout=60)
    if found.returncode:
        sys.exit(f"{other} does not run: {found.stderr.strip()}")
    env_dir = root / f"venv-{uuid.uuid4().hex[:8]}"
    if found.stdout.strip() == "%d.%d" % sys.version_info[:2]:
        return _own_console_scripts(overlay_venv(env_dir, interpreter=other))
    constraints = root / "same-versions.txt"
    constraints.write_text("".join(f"{dist.metadata['Name']}=={dist.version}\n"
                                   for dist in importlib.metadata.distributions()
                                   if not dist.metadata["Name"].lower().startswith("dolibarr")))
    return fresh_venv(env_dir, "--constraint", constraints, "--editable", BENCH_DIR.parent, interpreter=other)


def _own_console_scripts(python: Path) -> Path:
    """The console scripts of the core and of gunicorn live in the base environment; give the
    venv of ``python`` its own, as pip writes them, so that they run that python."""
    for script, target in (("gunicorn", "gunicorn.app.wsgiapp:run"),
                           ("dolibarr-webhooks", "dolibarr_webhooks.cli:main")):
        mod, func = target.split(":")
        path = python.parent / script
        path.write_text(CONSOLE_SCRIPT.format(python=python, module=mod, func=func))
        path.chmod(0o755)
    return python


@dataclass
class Summary:
    """Latency figures of one series, in milliseconds."""

    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds * 1000)

    def row(self) -> list[str]:
        v = self.values
        return [str(len(v)), f"{median(v):.1f}", f"{percentile(v, 95):.1f}", f"{percentile(v, 99):.1f}",
                f"{max(v):.1f}" if v else "-"]
