"""The systemd units: systemd's own verifier, then what the service needs from them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dolibarr_webhooks.settings import SETTINGS, parse_duration
from production_helpers import GUNICORN_CONF, NGINX_SITE, SYSTEMD, python_bin, require_tool

WEB = SYSTEMD / "dolibarr-webhooks.service"
SOCKET = SYSTEMD / "dolibarr-webhooks.socket"
WORKER = SYSTEMD / "dolibarr-webhooks-worker.service"
INSTALLED_BIN = "/opt/dolibarr-webhooks/venv/bin/"


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) pairs in order; keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        match = re.fullmatch(r"\[(\w+)\]", line)
        if match:
            current = sections.setdefault(match.group(1), [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not Key=Value"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def rendered(folder: Path, path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's programs, which
    systemd-analyze requires to exist."""
    text = path.read_text()
    assert INSTALLED_BIN in text
    target = folder / path.name
    target.write_text(text.replace(INSTALLED_BIN, f"{python_bin()}/"))
    return target


def test_systemd_analyze_verify(tmp_path):
    analyze = require_tool("systemd-analyze", "systemd")
    units = [str(rendered(tmp_path, WEB)), str(rendered(tmp_path, WORKER))]
    (tmp_path / SOCKET.name).write_text(SOCKET.read_text())  # beside the service it activates
    units.append(str(tmp_path / SOCKET.name))
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=120)
    # Unknown keys and bad values are only warnings for systemd: any output is a failure here.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr


@pytest.mark.parametrize("unit", [WEB, WORKER], ids=["web", "worker"])
def test_systemd_analyze_security(tmp_path, unit):
    analyze = require_tool("systemd-analyze", "systemd")
    result = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(rendered(tmp_path, unit))],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # systemd calls up to 2.0 "OK"


@pytest.mark.parametrize("path", [WEB, WORKER], ids=["web", "worker"])
def test_units_run_sandboxed_and_restart(path):
    # The same checks whether or not systemd-analyze could run: what the service relies on.
    unit = parse_unit(path)
    service = dict(unit["Service"])
    assert service["Restart"] == "on-failure"
    assert values(unit, "Service", "EnvironmentFile") == ["/etc/dolibarr-webhooks/dolibarr-webhooks.env"]
    assert service["User"] == "dolibarr-webhooks" or service.get("DynamicUser") == "yes"
    assert service["StateDirectory"] == "dolibarr-webhooks"
    assert service["WorkingDirectory"] == "/var/lib/dolibarr-webhooks"
    for key, value in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
                       "PrivateDevices": "yes", "KillSignal": "SIGTERM", "CapabilityBoundingSet": ""}.items():
        assert service.get(key) == value, f"{path.name}: {key}={service.get(key)!r}"
    assert unit["Install"] == [("WantedBy", "multi-user.target")]


def test_the_web_service_gets_its_socket_from_systemd():
    # Held across restarts of the service (tests/test_production_gunicorn.py restarts
    # gunicorn under load on such a socket and no request fails).
    socket_unit, web = parse_unit(SOCKET), parse_unit(WEB)
    assert values(web, "Unit", "Requires") == [SOCKET.name]
    assert SOCKET.name in values(web, "Unit", "After")[0].split()
    listen = values(socket_unit, "Socket", "ListenStream")
    assert listen == ["127.0.0.1:8080"], "loopback only, behind nginx"
    assert f"server {listen[0]};" in NGINX_SITE.read_text(), "nginx proxies to the socket's address"
    assert values(socket_unit, "Socket", "Accept") in ([], ["no"]), "one socket handed to gunicorn"
    assert socket_unit["Install"] == [("WantedBy", "sockets.target")]


def test_both_units_share_the_metrics_folder_and_the_settings():
    web, worker = parse_unit(WEB), parse_unit(WORKER)
    for key in ("EnvironmentFile", "User", "WorkingDirectory", "RuntimeDirectory", "StateDirectory"):
        assert values(web, "Service", key) == values(worker, "Service", key), key
    folders = {v.split("=", 1)[1] for u in (web, worker) for v in values(u, "Service", "Environment")
               if v.startswith("PROMETHEUS_MULTIPROC_DIR=")}
    assert folders == {"/run/dolibarr-webhooks/metrics"}
    for unit in (web, worker):
        assert dict(unit["Service"])["RuntimeDirectoryPreserve"] == "yes"


def test_the_web_service_keeps_glibc_from_growing_its_heap():
    # bench/rss.py: big bodies served from mmap, and two arenas for gunicorn's 16 threads.
    environment = values(parse_unit(WEB), "Service", "Environment")
    assert {"MALLOC_MMAP_THRESHOLD_=131072", "MALLOC_ARENA_MAX=2"} <= set(environment)


def test_exec_start_lines():
    web, worker = dict(parse_unit(WEB)["Service"]), dict(parse_unit(WORKER)["Service"])
    assert web["ExecStart"] == (f"{INSTALLED_BIN}gunicorn --config /opt/dolibarr-webhooks/contrib/gunicorn.conf.py "
                                "dolibarr_webhooks:create_app()")
    assert web["Type"] == "notify", "gunicorn tells systemd when it listens"
    assert worker["ExecStart"] == f"{INSTALLED_BIN}dolibarr-webhooks worker"


def test_stop_timeouts_leave_room_for_the_grace_periods():
    web, worker = dict(parse_unit(WEB)["Service"]), dict(parse_unit(WORKER)["Service"])
    graceful = int(re.search(r'GUNICORN_GRACEFUL_TIMEOUT"\) or (\d+)', GUNICORN_CONF.read_text()).group(1))
    assert parse_duration(web["TimeoutStopSec"]) >= graceful + 5
    shutdown_grace = parse_duration(SETTINGS["SHUTDOWN_GRACE"][0])
    assert parse_duration(worker["TimeoutStopSec"]) >= shutdown_grace + 10
    assert web["KillMode"] == worker["KillMode"] == "mixed"
