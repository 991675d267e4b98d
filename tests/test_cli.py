"""The ``webhooks`` commands and the ``dolibarr-webhooks`` console script."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from dolibarr_webhooks.cli.targets import is_local_url, reachable_address
from dolibarr_webhooks.samples import sample_body
from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET as SECRET
from dolibarr_webhooks.testing import free_port, running_service, wait_for, wait_for_port
from dolibarr_webhooks.version import __version__
from dolibarr_webhooks.web.gunicorn import web_processes
from dolibarr_webhooks_testplugin import command
from production_helpers import GUNICORN_CONF, without_dac_override

SCRIPT = Path(sys.executable).parent / "dolibarr-webhooks"


@pytest.fixture
def webhooks_config(tmp_path):
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'cli.sqlite3'}"}


def test_events_lists_codes_labels_objects_and_plugins(webhooks_runner):
    result = webhooks_runner.invoke(args=["webhooks", "events", "--json"])
    rows = {row["code"]: row for row in json.loads(result.output)}
    assert rows["BILL_PAYED"]["label"] == "Invoice paid" and rows["BILL_PAYED"]["label_fr"] == "Facture payée"
    assert rows["BILL_PAYED"]["element"] == "facture" and rows["BILL_PAYED"]["plugins"] == ["log"]
    assert rows["BILL_PAYED"]["aliases"] == ["INVOICE_PAYED"]
    assert rows["BILL_CREATE"]["offered_by_dolibarr_form"] is False  # emitted, not in the target form
    assert rows["PROPAL_CLOSE_SIGNED"]["offered_by_dolibarr_form"] is True
    assert "THIRDPARTY_CREATE" not in rows  # aliases are not codes
    text = webhooks_runner.invoke(args=["webhooks", "events"]).output
    assert re.search(r"^COMPANY_CREATE\s+Third party created\s+societe\s+Third parties\s+log\s+THIRDPARTY_CREATE$",
                     text, re.M)
    # The names guides use, which the receiver accepts, are listed with the real code.
    assert re.search(r"^BILL_PAYED\s.*\sINVOICE_PAYED$", text, re.M)
    assert re.search(r"^PROPAL_CLOSE_SIGNED\s.*\sPROPOSAL_CLOSE_SIGNED$", text, re.M)


def test_plugins_lists_name_version_hooks_events(webhooks_runner):
    output = webhooks_runner.invoke(args=["webhooks", "plugins", "--json"]).output
    rows = {row["name"]: row for row in json.loads(output)}
    assert rows["log"] == {"name": "log", "version": rows["log"]["version"], "hooks": ["handle_event"],
                           "events": None, "status": "enabled", "reason": "", "builtin": True, "warnings": []}
    assert rows["catalogue"]["hooks"] == ["register_events"]


def test_console_script_is_the_flask_group(tmp_path):
    env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET,
           "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"}
    ours = subprocess.run([str(SCRIPT), "events", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    flask = subprocess.run([sys.executable, "-m", "flask", "--app", "dolibarr_webhooks", "webhooks", "events",
                            "--json"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ours.returncode == 0 and ours.stdout == flask.stdout and len(json.loads(ours.stdout)) > 150


def test_a_secret_set_in_another_encoding_stops_the_commands_naming_it(tmp_path):
    """The environment's bytes, not UTF-8 (a secret pasted into a Latin-1 terminal): serve
    started and answered 500 to every request, check said the secret was fine. Both now stop
    with one line naming the variable."""
    env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET + "\udce9",  # subprocess writes it as the byte 0xe9
           "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"}
    port = free_port()
    for args in (["check"], ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]):
        result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, errors="replace", env=env,
                                cwd=tmp_path, timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"DOLIBARR_WEBHOOKS_SECRET: not UTF-8 text (byte 0xe9 at offset {len(SECRET)}); set it as UTF-8 " \
               "text" in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_an_sqlite_store_whose_folder_is_missing_or_not_writable_is_one_line_naming_the_folder(tmp_path):
    """DOLIBARR_WEBHOOKS_DATABASE_URL naming a file in a folder not made yet (a /var/lib path
    before the folder is made), or one the service's user may not write: migrate, worker,
    serve, Flask's command line and gunicorn printed the traceback of the writers' lock file
    beside it, where a database out of reach is one line. One line now, naming the folder and
    what is wrong with it, as check says it; nothing is created."""
    missing, read_only = tmp_path / "not-made-yet", tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    temporary = tmp_path / "tmp"  # where serve and gunicorn make their metrics folder, and must remove it
    temporary.mkdir()
    as_the_service = without_dac_override(tmp_path)  # root writes anywhere: the service's user does not
    for folder, prefix, problem in ((missing, [], "does not exist"),
                                    (read_only, as_the_service, "is not writable by this user")):
        database = folder / "webhooks.sqlite3"
        env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET, "TMPDIR": str(temporary),
               "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{database}"}
        said = f"Error: the store at sqlite:///{database} is unavailable (the folder {folder} {problem})"
        for args in ([str(SCRIPT), "migrate"], [str(SCRIPT), "worker"],
                     [str(SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(free_port())],
                     [sys.executable, "-m", "flask", "--app", "dolibarr_webhooks", "webhooks", "events"],
                     [str(SCRIPT.parent / "gunicorn"), "-c", str(GUNICORN_CONF), "--bind",
                      f"127.0.0.1:{free_port()}", "dolibarr_webhooks:create_app()"]):
            result = subprocess.run(prefix + args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
            assert result.returncode == 1, (args, result.stdout + result.stderr)
            assert result.stderr.count(said) == 1, (args, result.stderr)
            assert "Traceback" not in result.stderr, (args, result.stderr)
            assert not list(temporary.iterdir()), (args, result.stderr)
        check = subprocess.run(prefix + [str(SCRIPT), "check"], capture_output=True, text=True, env=env, cwd=tmp_path,
                               timeout=60)
        assert check.returncode == 1 and f"SQLite file {database}: the folder {folder} {problem}" in check.stdout, \
            check.stdout + check.stderr
    assert not missing.exists() and not list(read_only.iterdir())


def test_a_metrics_folder_that_cannot_be_made_or_written_is_one_line_naming_the_variable(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR where no folder can be made (under a file), or naming one the
    service's user may not write: serve, the worker and gunicorn under contrib's configuration
    printed the traceback of os.makedirs, or of prometheus_client's first sample file. One
    line now, naming the variable."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    as_the_service = without_dac_override(tmp_path)
    for folder, prefix, said in (
            (a_file / "metrics", [], f"cannot make the folder {a_file / 'metrics'} (Not a directory)"),
            (read_only, as_the_service, f"the folder {read_only} is not writable by this user")):
        env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET, "PROMETHEUS_MULTIPROC_DIR": str(folder),
               "DOLIBARR_WEBHOOKS_DATABASE_URL": f"sqlite:///{tmp_path / 'webhooks.sqlite3'}"}
        for args, status in (([str(SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(free_port())], 2),
                             ([str(SCRIPT), "worker"], 2),
                             ([str(SCRIPT.parent / "gunicorn"), "-c", str(GUNICORN_CONF), "--bind",
                               f"127.0.0.1:{free_port()}", "dolibarr_webhooks:create_app()"], 1)):
            result = subprocess.run(prefix + args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
            assert result.returncode == status, (args, result.stdout + result.stderr)
            assert result.stderr.count(f"Error: PROMETHEUS_MULTIPROC_DIR: {said}") == 1, (args, result.stderr)
            assert "Traceback" not in result.stderr, (args, result.stderr)


@pytest.mark.slow
def test_a_store_out_of_reach_is_one_line_from_every_command_and_from_gunicorn(tmp_path):
    """A database that cannot be reached (nothing listens on its port): each command that uses
    the store printed SQLAlchemy's traceback, and each gunicorn process its own, as for a bad
    setting. One line now, naming the store (its password masked) and what the driver said;
    the commands that need no store (events) work."""
    port = free_port()
    env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET,
           "DOLIBARR_WEBHOOKS_DATABASE_URL": f"postgresql://postgres:hunter2hunter2@127.0.0.1:{port}/gone"}
    said = f"the store at postgresql://postgres:***@127.0.0.1:{port}/gone is unavailable (OperationalError: "
    for args in (["stats"], ["show", "evt_x"], ["deliveries", "--status", "dead"], ["migrate"], ["replay", "evt_x"]):
        result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert result.returncode == 1, (args, result.stdout + result.stderr)
        assert result.stderr.startswith("Error: " + said), (args, result.stderr)
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr, (args, result.stderr)
    events = subprocess.run([str(SCRIPT), "events"], capture_output=True, env=env, cwd=tmp_path, timeout=60)
    assert events.returncode == 0, events.stderr
    # Flask's own command line builds the app (and migrates) before it knows the command: the
    # same line there, and a bad setting is the line dolibarr-webhooks prints, not a traceback.
    flask = [sys.executable, "-m", "flask", "--app", "dolibarr_webhooks"]
    for args, environ, status, line in (
            (["webhooks", "stats"], env, 1, said), (["run", "--port", str(free_port())], env, 1, said),
            (["webhooks", "stats"], {**env, "DOLIBARR_WEBHOOKS_SECRET": "short"}, 2,
             "DOLIBARR_WEBHOOKS_SECRET: a secret must have at least 16 characters\n")):
        result = subprocess.run(flask + args, capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=60)
        assert result.returncode == status, (args, result.stdout + result.stderr)
        assert result.stderr.startswith("Error: " + line), (args, result.stderr)
        assert "Traceback" not in result.stderr and "hunter2" not in result.stderr, (args, result.stderr)
    # gunicorn, production's and serve's, before it forks: one line, where each process said
    # it and its master could add a traceback (two processes failing at once). serve named
    # the database with its password.
    gunicorn = [str(SCRIPT.parent / "gunicorn"), "-c", str(GUNICORN_CONF), "--bind", f"127.0.0.1:{free_port()}",
                "dolibarr_webhooks:create_app()"]
    serve = [str(SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    temporary = tmp_path / "tmp"  # where each makes its metrics folder, and must remove it
    temporary.mkdir()
    env = {**env, "TMPDIR": str(temporary)}
    for started, environ, line in ((gunicorn, env, said), (serve, env, said),
                                   (gunicorn, {**env, "DOLIBARR_WEBHOOKS_SECRET": "short"},
                                    "DOLIBARR_WEBHOOKS_SECRET: a secret must have at least 16 characters")):
        result = subprocess.run(started, capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120)
        assert not list(temporary.iterdir()), result.stderr
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.count(line) == 1, result.stderr
        assert "Traceback" not in result.stderr and "Booting worker" not in result.stderr, result.stderr
        assert "hunter2" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_local_url_detection():
    assert is_local_url("http://127.0.0.1:8080/webhook/x") and is_local_url("http://192.168.1.5/webhook/x")
    assert is_local_url("http://localhost/webhook/x") and is_local_url("http://[::1]/webhook/x")
    assert not is_local_url("https://93.184.215.14/webhook/x")


def test_send_posts_a_sample_as_dolibarr_would():
    with running_service(worker=False) as service:
        result = service.cli("send", "BILL_VALIDATE")
        assert "-> 200" in result.stdout and '"trigger_code":"BILL_VALIDATE"' in result.stdout
        assert service.secret not in result.stdout  # the URL is printed redacted
        custom = service.cli("send", "X", "--url", service.url + "/webhook/wrong-secret-000000000", check=False)
        assert custom.returncode == 1 and "-> 401" in custom.stdout and "failure" in custom.stdout


def test_send_checks_the_url_it_is_given(make_app):
    """urllib's bare ValueError ('unknown url type') was a traceback."""
    app = make_app()
    for url, said in (("1w", "'1w' is not an http(s) URL"), ("", "is empty"), ("ftp://x/y", "not an http(s) URL")):
        output = command(app, "send", "BILL_PAYED", "--url", url, exit_code=2)
        assert "Invalid value for --url: " in output and said in output, output


def test_send_to_a_port_where_nothing_listens_says_what_to_check(tmp_path):
    env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET}
    port = free_port()
    result = subprocess.run([str(SCRIPT), "send", "BILL_PAYED", "--port", str(port)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and f"cannot reach http://127.0.0.1:{port}/webhook/***" in result.stderr
    assert f"is 'dolibarr-webhooks serve' running on port {port}?" in result.stderr
    assert SECRET not in result.stderr


def test_serve_reads_its_settings_once_for_gunicorn_and_the_app(tmp_path):
    """LOG_FORMAT=json in serve's env file reaches gunicorn's own lines as well as the app's, and
    the workers get the generated secret and the embedded worker from serve's one reading, not
    from the environment (issue #12)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    env["PYTHONUNBUFFERED"] = "1"
    (tmp_path / "service.env").write_text("DOLIBARR_WEBHOOKS_LOG_FORMAT=json\n")
    process = subprocess.Popen([str(SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                "--env-file", "service.env"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_port(port, process=process)
        secret = re.search(r"^DOLIBARR_WEBHOOKS_SECRET=(\S+)$", (tmp_path / "service.env").read_text(), re.M).group(1)
        response = requests.post(f"http://127.0.0.1:{port}/webhook/{secret}", data=sample_body("COMPANY_CREATE"),
                                 timeout=10)
        assert response.status_code == 200

        def stats() -> dict:
            done = subprocess.run([str(SCRIPT), "stats", "--json"], cwd=tmp_path, capture_output=True, text=True,
                                  env={**env, "DOLIBARR_WEBHOOKS_ENV_FILE": "service.env"})
            return json.loads(done.stdout)

        wait_for(lambda: stats()["deliveries"]["delivered"] == 1, 20, interval=0.2,
                 message=lambda: f"not delivered: {stats()}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    loggers = {line["logger"] for line in lines}
    assert "gunicorn.error" in loggers, output  # gunicorn's own lines: "Listening at", "Booting worker"
    assert "dolibarr_webhooks.access" in loggers, output  # the app's
    assert not [line for line in output.splitlines() if line.startswith("[") and "[INFO]" in line], output
    assert secret not in output.replace(f"/webhook/{secret}\n", "")  # only in the printed target URL


def test_serve_generates_a_secret_and_prints_the_target_url(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen([str(SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        wait_for_port(port, process=process)
        secret = re.search(r"^DOLIBARR_WEBHOOKS_SECRET=(\S+)$", (tmp_path / ".env").read_text(), re.M).group(1)
        assert len(secret) >= 32 and oct((tmp_path / ".env").stat().st_mode)[-3:] == "600"
        response = requests.post(f"http://127.0.0.1:{port}/webhook/{secret}", data=sample_body("COMPANY_CREATE"),
                                 timeout=10)
        assert response.status_code == 200
        # The embedded worker delivers it without a separate process.

        def stats() -> dict:
            return json.loads(subprocess.run([str(SCRIPT), "stats", "--json"], cwd=tmp_path, env=env,
                                             capture_output=True, text=True).stdout)

        wait_for(lambda: stats()["deliveries"]["delivered"] == 1, 20, interval=0.2,
                 message=lambda: f"not delivered: {stats()}")
        # Both processes write their samples to one folder: whichever answers /metrics counts
        # the requests of both (new connections, so both take some).
        for number in range(1, 8):
            assert requests.post(f"http://127.0.0.1:{port}/webhook/{secret}", timeout=10,
                                 data=sample_body("COMPANY_CREATE").replace(b'"id":', b'"id":%d0' % number, 1)).ok
        for _ in range(4):
            scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert re.search(r'^dolibarr_webhooks_requests_total\{reason="accepted",status="200"\} 8\.0$',
                             scraped, re.M), scraped
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert "imported before" not in output, output
    assert f"/webhook/{secret}" in output and f":{port}/webhook/" in output
    assert "Paste this URL in Dolibarr" in output
    url = re.search(r"^\s+(http://\S+/webhook/\S+)$", output, re.M).group(1)
    # A private address gets the note about Dolibarr 23.0.3's refusal of local URLs.
    assert is_local_url(url) == ("$dolibarr_allow_localurl_for_webhooks = 1;" in output)
    assert "Database: sqlite:///" in output
    assert f"Listening on 127.0.0.1:{port} (--host): only what reaches this address can post." in output
    # A second start reuses the saved secret instead of making a new one.
    again = subprocess.run([str(SCRIPT), "plugins"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "no secret configured" not in again.stderr


def test_a_bad_setting_is_one_plain_line_naming_it(tmp_path):
    env = {**os.environ, "DOLIBARR_WEBHOOKS_SECRET": SECRET, "DOLIBARR_WEBHOOKS_RETENTION": "forever"}
    result = subprocess.run([str(SCRIPT), "stats"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: DOLIBARR_WEBHOOKS_RETENTION:")
    assert "Traceback" not in result.stderr


# A command run in this child's own process: how it exited, then the files it still has open
# under the folder it ran in.
IN_PROCESS = """
import json, sys
from dolibarr_webhooks_testplugin import files_open
if sys.argv[1] == "flask":
    from flask.cli import main
    sys.argv[:2] = ["flask", "--app", "dolibarr_webhooks", "webhooks"]
else:
    from dolibarr_webhooks.cli import main
    sys.argv[:2] = ["dolibarr-webhooks"]
try:
    main()
except SystemExit as exc:
    print(json.dumps({"exit": exc.code, "open": files_open(sys.path[0])}))
"""


@pytest.mark.parametrize("entry", ["dolibarr-webhooks", "flask"])
def test_a_command_closes_the_store_it_opened_when_it_ends(tmp_path, entry):
    """Not at the interpreter's exit, where Python 3.13 warns of each SQLite connection; after
    an error too (``show`` of no event). The same under ``flask --app dolibarr_webhooks``,
    where Flask makes the app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    env.update(DOLIBARR_WEBHOOKS_SECRET=SECRET, DOLIBARR_WEBHOOKS_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    script = tmp_path / "in_process.py"
    script.write_text(IN_PROCESS)
    for args, exit_code in ((["migrate"], 0), (["stats"], 0), (["deliveries", "--status", "dead"], 0),
                            (["show", "evt_none"], 1)):
        result = subprocess.run([sys.executable, str(script), entry, *args], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=60)
        assert json.loads(result.stdout.splitlines()[-1]) == {"exit": exit_code, "open": []}, (args, result.stderr)


def test_serve_on_every_interface_says_so_and_prints_a_reachable_url(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    env.update(PYTHONUNBUFFERED="1", DOLIBARR_WEBHOOKS_PORT=str(port),
               DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL="http://127.0.0.1:9/services/T/B/X")
    log = tmp_path.parent / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([str(SCRIPT), "serve"], cwd=tmp_path, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, process=process)
        # Every gunicorn process serve started (two per CPU) has built its app and announced
        # what it announces.
        wait_for(lambda: len(re.findall(r"worker \S+ started", log.read_text())) == web_processes(), 30,
                 message=log.read_text)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    output = log.read_text()
    assert f"Listening on 0.0.0.0:{port}, every network interface (the default)" in output
    url = re.search(r"^\s+(http://\S+/webhook/\S+)$", output, re.M).group(1)
    assert url.startswith(f"http://{reachable_address()}:{port}/webhook/")
    assert reachable_address() == "127.0.0.1" or "127.0.0.1" not in url
    # The Slack plugin's warning about its plain-http URL: once, for every process of serve.
    assert output.count("plain http") == 1, output
    assert "Warning: plugin slack: DOLIBARR_WEBHOOKS_SLACK_WEBHOOK_URL uses plain http" in output


def test_version_names_the_service_first():
    result = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == f"dolibarr-webhooks {__version__}"
    assert re.search(r"^Python 3\.\d+\.\d+$", result.stdout, re.M) and re.search(r"^Flask \d", result.stdout, re.M)


def test_env_file_option_is_read_by_every_command_and_serve_saves_its_secret_there(tmp_path):
    """``--env-file`` (DOLIBARR_WEBHOOKS_ENV_FILE) names the settings' file for any command;
    serve reads it and saves a generated secret into it, not into ./.env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    (tmp_path / "conf").mkdir()
    service_env = tmp_path / "conf" / "service.env"
    service_env.write_text(f"DOLIBARR_WEBHOOKS_DATABASE_URL=sqlite:///{tmp_path / 'data.sqlite3'}\n")
    migrated = subprocess.run([str(SCRIPT), "--env-file", "conf/service.env", "migrate"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    stats = subprocess.run([str(SCRIPT), "-e", "conf/service.env", "stats", "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert stats.returncode == 0 and json.loads(stats.stdout)["events"] == 0, stats.stderr
    assert not (tmp_path / "dolibarr-webhooks.sqlite3").exists()  # the default store was never opened

    port = free_port()
    env.update(PYTHONUNBUFFERED="1", DOLIBARR_WEBHOOKS_ENV_FILE="conf/service.env")
    process = subprocess.Popen([str(SCRIPT), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        wait_for_port(port, process=process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert "Generated a secret and saved it to conf/service.env." in output
    assert f"Database: sqlite:///{tmp_path / 'data.sqlite3'}" in output
    assert re.search(r"^DOLIBARR_WEBHOOKS_SECRET=\S{32,}$", service_env.read_text(), re.M)
    assert not (tmp_path / ".env").exists()


def test_an_env_file_named_but_not_there_stops_every_command_with_one_line(tmp_path):
    """``--env-file`` (or DOLIBARR_WEBHOOKS_ENV_FILE) with a typo in its path: every command ran
    on the defaults (the store of the folder it ran in, no secret) and said nothing; check
    said the settings came from the environment. One line now, naming the file; serve still
    makes the file it is given, to save a secret it generates (the test above)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    said = "DOLIBARR_WEBHOOKS_ENV_FILE: no file conf/typo.env"
    for args, environ in ((["--env-file", "conf/typo.env", "stats"], env),
                          (["-e", "conf/typo.env", "migrate"], env),
                          (["worker"], {**env, "DOLIBARR_WEBHOOKS_ENV_FILE": "conf/typo.env"})):
        result = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=environ, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and result.stderr == f"Error: {said}\n", (args, result.stderr)
    for args in (["--env-file", "conf/typo.env", "check"], ["check", "--env-file", "conf/typo.env"]):
        result = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 1 and f"ERROR    settings: {said}\n" in result.stdout, (args, result.stdout)
    assert list(tmp_path.iterdir()) == []  # no store made on the defaults


@pytest.mark.parametrize("url", ["mysql://shop:s3cret-pw@db/hooks", "postgresql://shop:s3cret-pw@db:54x2/hooks",
                                 "postgresql://shop:s3cret-pw@db1:5432,db2:x/hooks"])
def test_a_database_url_that_cannot_be_used_is_one_line_with_its_password_masked(tmp_path, url):
    """A typo in a port (or in one of several servers') was SQLAlchemy's traceback from every
    command; a URL of another database was one line that printed its password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    env["DOLIBARR_WEBHOOKS_DATABASE_URL"] = url
    shown = url.replace("s3cret-pw", "***")
    for args in (["stats"], ["migrate"], ["worker"]):
        result = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and result.stderr.startswith(f"Error: DOLIBARR_WEBHOOKS_DATABASE_URL: "
                                                                   f"{shown!r} "), (args, result.stderr)
        assert result.stderr.count("\n") == 1 and "s3cret-pw" not in result.stderr, result.stderr
    result = subprocess.run([str(SCRIPT), "check"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and f"DOLIBARR_WEBHOOKS_DATABASE_URL: {shown!r} " in result.stdout, result.stdout
    assert "s3cret-pw" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--help"], ["events"], ["plugins"], ["check"], ["send", "--help"]])
def test_commands_that_only_read_leave_no_file(tmp_path, args):
    """Run in whatever folder, they create no store, no lock file, and log no error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    result = subprocess.run([str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == (1 if args == ["check"] else 0), result.stderr  # check: no secret is an error
    assert list(tmp_path.iterdir()) == []
    assert "ERROR" not in result.stderr and "Traceback" not in result.stderr
    if args == ["--help"]:
        commands = re.findall(r"^  (\S+)  ", result.stdout.split("Commands:")[1], re.M)
        assert "events" in commands and "serve" in commands
        assert "webhooks" not in commands and "limiter" not in commands
        # The service's own options, not Flask's (--app chooses another application, --debug a debugger).
        options = re.findall(r"^  (-\S+)", result.stdout.split("Commands:")[0], re.M)
        assert options == ["-e,", "--version", "--help"], result.stdout


def test_reading_commands_name_a_missing_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOLIBARR_WEBHOOKS_", "WEBHOOK_"))}
    result = subprocess.run([str(SCRIPT), "stats"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1 and f"no store at {tmp_path / 'dolibarr-webhooks.sqlite3'} yet" in result.stderr
    assert list(tmp_path.iterdir()) == []
