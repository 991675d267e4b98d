"""The ``webhooks`` command group: ``flask --app dolibarr_webhooks webhooks ...``, and the
``dolibarr-webhooks`` console script, which is the same commands bound to the app."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup

from .config import ConfigError, generate_secret, load_settings, parse_duration
from .describe import summary
from .event import Event
from .store import DEAD, DELIVERY_STATES, FAILED

webhooks = AppGroup("webhooks", help="Receive, inspect and replay Dolibarr webhooks.")


def service():
    return current_app.extensions["dolibarr_webhooks"]


def _emit(data: Any, as_json: bool, text: str | Iterable[str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        click.echo(text if isinstance(text, str) else "\n".join(text))


def _table(rows: list[list[str]], headers: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _since(value: str | None) -> float | None:
    """``--since`` takes a duration back from now (``2h``) or an ISO date or time."""
    if not value:
        return None
    try:
        return time.time() - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (2h, 30d) nor an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


# -- listings shared with GET /webhook/events -------------------------------------------
def event_rows(plugins) -> list[dict[str, Any]]:
    rows = []
    for code in plugins.event_codes():
        known = plugins.catalogue.get(code)
        rows.append({
            "code": code,
            "label": known.label_en if known else code,
            "label_fr": known.label_fr if known else code,
            "element": known.element if known else None,
            "offered_by_dolibarr_form": known.offered if known else False,
            "never_fired": known.never_fired if known else False,
            "module": (known.module or None) if known else None,
            "aliases": list(known.aliases) if known else [],
            "plugins": plugins.handlers_for(code),
        })
    return rows


def plugin_rows(plugins) -> list[dict[str, Any]]:
    return [info.to_dict() for info in plugins.info.values()]


@webhooks.command("events")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--handled", is_flag=True, help="Only events some plugin handles.")
def events_command(as_json: bool, handled: bool) -> None:
    """List every known or handled event code, its label, object type and plugins."""
    rows = [r for r in event_rows(service().plugins) if r["plugins"] or not handled]
    lines = _table([[r["code"] + (" (never fired)" if r["never_fired"] else ""), r["label"], r["element"] or "-",
                     r["module"] or "-", ",".join(r["plugins"]) or "-", ",".join(r["aliases"])] for r in rows],
                   ["Code", "Label", "Object", "Module", "Plugins", "Also accepted as"])
    lines += ["", "'Also accepted as': names some guides use; such events are stored under Dolibarr's code."]
    never = [r["code"] for r in rows if r["never_fired"]]
    if never:
        lines.append(f"never fired: {', '.join(never)} (offered by Dolibarr's target form, fired by no release: "
                     "a target subscribed to it gets nothing)")
    _emit(rows, as_json, lines)


@webhooks.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(as_json: bool) -> None:
    """List loaded plugins: name, version, hooks, events and status."""
    rows = plugin_rows(service().plugins)
    _emit(rows, as_json, _table(
        [[r["name"], r["version"] or "-", ",".join(r["hooks"]),
          "all" if r["events"] is None else ",".join(r["events"]) or "none",
          r["status"] + (f" ({r['reason']})" if r["reason"] else "")] for r in rows],
        ["Name", "Version", "Hooks", "Events", "Status"]))


# -- target URLs, shared by serve and check ---------------------------------------------
ALL_INTERFACES = ("0.0.0.0", "::", "")


def reachable_address() -> str:
    """This host's address on the network its default route leads to: the one another machine
    (Dolibarr's) most likely reaches it at. Connecting a UDP socket sends nothing."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
        return probe.getsockname()[0]
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def target_url(settings, secret: str) -> str:
    """The URL to give Dolibarr: PUBLIC_URL, else the address the service listens on, else (on
    every interface) this host's reachable address."""
    host = settings["HOST"]
    if host in ALL_INTERFACES:
        host = reachable_address()
    if ":" in host:
        host = f"[{host}]"
    base = settings["PUBLIC_URL"] or f"http://{host}:{settings['PORT']}"
    return f"{base.rstrip('/')}/webhook/{secret}"


def is_local_url(url: str) -> bool:
    """Whether Dolibarr 23.0.3+ refuses this URL unless $dolibarr_allow_localurl_for_webhooks = 1."""
    host = urlsplit(url).hostname or ""
    if host in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            return False
    return ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_link_local


LOCAL_URL_WARNING = ("this URL is local or private: Dolibarr 23.0.3 and later refuse to post to it unless "
                     "conf.php sets $dolibarr_allow_localurl_for_webhooks = 1;")


# -- sending a sample -------------------------------------------------------------------
@webhooks.command("send")
@click.argument("code")
@click.option("--payload", type=click.Path(exists=True, dir_okay=False), help="Body to send (default: a sample).")
@click.option("--url", help="Target URL (default: this service on localhost, with its secret).")
def send_command(code: str, payload: str | None, url: str | None) -> None:
    """Post a sample event to a running service, as Dolibarr would."""
    import urllib.error
    import urllib.request

    from .samples import sample_body, sample_codes

    if payload:
        body = Path(payload).read_bytes()
    else:
        try:
            body = sample_body(code)
        except KeyError:
            body = json.dumps({"triggercode": code.upper(), "object": {"id": 1, "ref": "SAMPLE"}}).encode()
            click.echo(f"no sample body for {code} (samples: {', '.join(sample_codes())}); sending a minimal one")
    if url is None:
        settings = service().settings
        secrets = settings.secrets
        url = f"http://127.0.0.1:{settings['PORT']}/webhook" + (f"/{secrets[0]}" if secrets else "")
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "User-Agent": "Dolibarr geturl function", "Accept": "*/*", "Content-Type": "application/json"})
    from .logs import redact

    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach {redact(url)}: {exc}") from None
    click.echo(f"POST {redact(url)} -> {status}\n{text.strip()}")
    if not 200 <= status < 300:
        click.echo("Dolibarr would count this as a failure (and roll back the user's action).")
        sys.exit(1)


# -- the worker -------------------------------------------------------------------------
@webhooks.command("worker")
@click.option("--until-idle", type=float, default=None, metavar="SECONDS",
              help="Stop once nothing was due for this long (for scripts and tests).")
@click.option("--name", default=None, help="Worker name in the attempt log (default host:pid).")
def worker_command(until_idle: float | None, name: str | None) -> None:
    """Run the worker: deliver stored events to plugins, with retries."""
    from .store import Store

    svc = service()
    store = None
    if not svc.store.is_postgres:
        # The worker's own writes (claims, outcomes) need no fsync each: one lost in a power cut
        # only runs a delivery again, as after a lost lease; the web's FULL commits stay durable.
        store = Store(svc.settings["DATABASE_URL"], "NORMAL", svc.settings["REQUEST_DEADLINE"])
    worker = svc.make_worker(name, store=store)

    def stop(signum, _frame):
        click.echo(f"signal {signum}: finishing running handlers, then stopping", err=True)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run(stop_after_idle=until_idle)


# -- inspection and replay --------------------------------------------------------------
@webhooks.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(as_json: bool) -> None:
    """Events, deliveries by status and by plugin, oldest pending age."""
    stats = service().store.stats()
    lines = [f"events: {stats['events']} (duplicates {stats['duplicates']}, quarantined {stats['quarantined']})",
             "deliveries: " + ", ".join(f"{k} {v}" for k, v in stats["deliveries"].items()),
             f"oldest pending: {stats['oldest_pending_age'] if stats['oldest_pending_age'] is not None else '-'} s",
             f"duplicate runs: {stats['duplicate_runs']}"]
    lines += _table([[p] + [str(c[s]) for s in DELIVERY_STATES] for p, c in sorted(stats["plugins"].items())],
                    ["Plugin", *DELIVERY_STATES])
    _emit(stats, as_json, lines)


@webhooks.command("deliveries")
@click.option("--status", type=click.Choice(DELIVERY_STATES))
@click.option("--plugin")
@click.option("--code", help="Trigger code.")
@click.option("--since", help="A duration back from now (2h) or an ISO date.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def deliveries_command(status, plugin, code, since, limit, as_json) -> None:
    """List deliveries, newest event first."""
    rows = service().store.list_deliveries(status=status, plugin=plugin, code=code and code.upper(),
                                           since=_since(since), limit=limit)
    _emit(rows, as_json, _table(
        [[r["event_id"], r["trigger_code"], r["label"] or r["ref"] or "-", r["plugin"], r["status"],
          str(r["attempts"]), _when(r["next_attempt_at"]) if r["status"] in ("pending", FAILED) else "-",
          (r["last_error"] or "")[:60]] for r in rows],
        ["Event", "Code", "Object", "Plugin", "Status", "Attempts", "Next", "Last error"]))


@webhooks.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(event_id: str, as_json: bool) -> None:
    """Show one event, its deliveries, attempts, errors and timings."""
    data = service().store.show(event_id)
    if data is None:
        raise click.ClickException(f"no event {event_id}")
    if data["payload"]:
        # What was stored before credentials were masked is never shown with them.
        data["payload"] = service().scrubber(data["source"]).scrub(data["payload"])
    lines = [f"event {data['id']}  {data['trigger_code'] or '(unparsed)'}  {data['status']}",
             f"received {_when(data['received_at'])} from source {data['source']} ({data['remote_addr'] or '-'})"]
    if data["payload"]:
        lines.append("  " + summary(Event.from_dict(data["payload"])))
    if data["duplicate_of"]:
        # A duplicate keeps no payload: its body is the original's.
        lines.append(f"  duplicate of {data['duplicate_of']} (the same body): "
                     f"dolibarr-webhooks show {data['duplicate_of']}")
    if data["error"]:
        lines.append(f"  note: {data['error']}")
    for d in data["deliveries"]:
        runs = _number_runs(d["attempts_log"])
        made = _plural(d["attempts"], "attempt") + (f" in run {runs} ({_plural(len(d['attempts_log']), 'attempt')} "
                                                    f"in all)" if runs > 1 else "")
        lines.append(f"- {d['plugin']}: {d['status']}, {made}"
                     + (f", last error: {d['last_error']}" if d["last_error"] else ""))
        for a in d["attempts_log"]:
            run = f"run {a['run']} " if runs > 1 else ""
            lines.append(f"    {run}#{a['number']} {_when(a['started_at'])} {a['outcome']} {a['duration_ms']:.1f} ms"
                         f" on {a['worker']}" + (f": {a['error']}" if a["error"] else ""))
    _emit(data, as_json, lines)


def _element(kind: str) -> str:
    """Dolibarr's object type from what a person types: ``societe``, ``COMPANY``, ``thirdparty``."""
    from .catalogue import FAMILIES, canonical_code

    family = canonical_code(kind + "_X")[:-2]
    return FAMILIES[family][0] if family in FAMILIES else kind.lower()


@webhooks.command("history")
@click.argument("kind")
@click.argument("object_id")
@click.option("--source", help="Only this source's events.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history_command(kind: str, object_id: str, source: str | None, as_json: bool) -> None:
    """Every event of one Dolibarr object, oldest first: 'history societe 16' (or COMPANY 16)."""
    element = _element(kind)
    rows = service().store.object_events(element, object_id, source=source)
    _emit(rows, as_json, _table(
        [[_when(r["received_at"]), r["trigger_code"], r["label"] or "-", r["status"], r["id"]] for r in rows],
        ["Received", "Code", "Object", "Status", "Event"]) if rows else f"no event of {element} {object_id}")


@webhooks.command("scrub")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def scrub_command(as_json: bool) -> None:
    """Mask credentials in events stored before the current scrub rule (and label them)."""
    from .credentials import expected_rules

    svc = service()
    done = svc.store.rescrub(svc.scrubber, *expected_rules(svc.sources))
    _emit(done, as_json, f"{done['read']} events scrubbed again under the current rule, "
                         f"{done['changed']} of them changed")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _number_runs(attempts: list[dict[str, Any]]) -> int:
    """Set each attempt's ``run``: attempts are numbered from 1 again after each replay. Returns the runs."""
    run, previous = 0, None
    for attempt in attempts:
        if previous is None or attempt["number"] <= previous:
            run += 1
        previous = attempt["number"]
        attempt["run"] = run
    return run


@webhooks.command("replay")
@click.argument("event_id", required=False)
@click.option("--dead", is_flag=True, help="Every dead delivery.")
@click.option("--failed", is_flag=True, help="Every delivery waiting for a retry (run it now).")
@click.option("--since", help="Deliveries of events received since (2h, or an ISO date).")
@click.option("--plugin", help="Only this plugin's deliveries (creates it for EVENT_ID if missing).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def replay_command(event_id, dead, failed, since, plugin, as_json) -> None:
    """Run deliveries again, now, with a fresh retry budget."""
    if not (event_id or dead or failed or since):
        raise click.UsageError("give an EVENT_ID, --dead, --failed or --since")
    statuses = [s for s, on in ((DEAD, dead), (FAILED, failed)) if on]
    count = service().store.replay(event_id=event_id, statuses=statuses, since=_since(since), plugin=plugin)
    _emit({"replayed": count}, as_json, f"{count} deliveries scheduled again")


@webhooks.command("purge")
@click.option("--older-than", required=True, help="Age, e.g. 30d.")
@click.option("--include-unfinished", is_flag=True, help="Also events with failed or dead deliveries.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def purge_command(older_than: str, include_unfinished: bool, as_json: bool) -> None:
    """Delete old events whose deliveries are all done."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    count = service().store.purge(age, include_unfinished=include_unfinished)
    _emit({"purged": count}, as_json, f"{count} events purged")


@webhooks.command("reprocess")
@click.argument("event_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def reprocess_command(event_id: str | None, as_json: bool) -> None:
    """Parse quarantined bodies again and dispatch those that parse now."""
    results = service().reprocess(event_id)
    _emit([{"id": i, "result": r} for i, r in results], as_json,
          [f"{i}: {r}" for i, r in results] or ["nothing quarantined"])


@webhooks.command("migrate")
def migrate_command() -> None:
    """Bring the database schema to the latest version."""
    applied = service().store.migrate()
    click.echo(f"applied migrations {applied}" if applied else "schema is up to date")


# -- first try ------------------------------------------------------------------------------
@webhooks.command("serve", with_appcontext=False)
@click.option("--host", default=None, help="Listen address (default DOLIBARR_WEBHOOKS_HOST or 0.0.0.0).")
@click.option("--port", type=int, default=None, help="Port (default DOLIBARR_WEBHOOKS_PORT, WEBHOOK_PORT or 8080).")
@click.option("--workers", type=int, default=2, show_default=True, help="gunicorn worker processes.")
@click.option("--env-file", default=".env", show_default=True, help="Where a generated secret is saved.")
def serve_command(host: str | None, port: int | None, workers: int, env_file: str) -> None:
    """Run the service with its embedded defaults (SQLite, worker inside), for a first try."""
    try:
        settings = load_settings(env_file=env_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    secrets = settings.secrets
    if not secrets and not settings["INSECURE_NO_AUTH"]:
        secret = generate_secret()
        with open(env_file, "a", encoding="utf-8") as fh:
            fh.write(f"\n# generated by 'dolibarr-webhooks serve' on {datetime.now(timezone.utc):%Y-%m-%d}\n"
                     f"DOLIBARR_WEBHOOKS_SECRET={secret}\n")
        os.chmod(env_file, 0o600)
        os.environ["DOLIBARR_WEBHOOKS_SECRET"] = secret
        click.echo(f"Generated a secret and saved it to {env_file}.")
        secrets = [secret]
    origin = settings.origins.get("HOST")
    where = "--host" if host else (f"DOLIBARR_WEBHOOKS_HOST from {origin}" if origin else "the default")
    host = host or settings["HOST"]
    port = port or settings["PORT"]
    os.environ["DOLIBARR_WEBHOOKS_HOST"] = host
    os.environ["DOLIBARR_WEBHOOKS_PORT"] = str(port)
    os.environ["DOLIBARR_WEBHOOKS_EMBEDDED_WORKER"] = "1"
    settings = load_settings(env_file=env_file)
    click.echo(f"Database: {settings['DATABASE_URL']}")
    if host in ALL_INTERFACES:
        click.echo(f"Listening on {host or '0.0.0.0'}:{port}, every network interface ({where}), so that Dolibarr "
                   f"on another machine can reach it; --host 127.0.0.1 keeps it to this machine.")
    else:
        click.echo(f"Listening on {host}:{port} ({where}): only what reaches this address can post.")
    if secrets:
        url = target_url(settings, secrets[0])
        click.echo("Paste this URL in Dolibarr (Home > Setup > Modules > Webhook > Targets > New target):\n\n"
                   f"    {url}\n")
        if not settings["PUBLIC_URL"] and host in ALL_INTERFACES:
            click.echo("(this host's address on its network; if Dolibarr reaches it by another name or through "
                       "a proxy, set DOLIBARR_WEBHOOKS_PUBLIC_URL)")
        if is_local_url(url):
            click.echo(f"Note: {LOCAL_URL_WARNING}")
    _announce(settings)
    from .gunicorn import run

    run(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", workers=workers,
        request_deadline=settings["REQUEST_DEADLINE"])


def _announce(settings) -> None:
    """What each of serve's processes would log at start, said once (they do not)."""
    from .plugins import build_plugins

    if not settings.secrets:
        click.echo("INSECURE: DOLIBARR_WEBHOOKS_INSECURE_NO_AUTH is on: events are accepted from anyone. "
                   "For local trials only.", err=True)
    for name, info in build_plugins(settings).info.items():
        if info.status == "disabled" and not info.builtin:
            click.echo(f"Plugin {name} is off: {info.reason}")
        for warning in info.warnings:
            click.echo(f"Warning: plugin {name}: {warning}", err=True)


def init_app(app: Flask) -> None:
    app.cli.add_command(webhooks)


# Commands that run the service create and migrate the store and announce the configuration
# (a missing secret, plugin warnings) in the log. Those that need no store (and --help) leave no
# file behind in the folder they run in; every other command works on a store already there.
SERVICE_COMMANDS = ("worker", "migrate")
STORELESS_COMMANDS = ("events", "plugins", "send")


def _create_cli_app() -> Flask:
    """The app for one command, built when the command first needs it."""
    from . import create_app
    from .store import sqlite_path

    ctx = click.get_current_context(silent=True)
    command = ctx.info_name if ctx else None
    if command in SERVICE_COMMANDS:
        return create_app({"ANNOUNCE": command == "worker"})
    database = sqlite_path(load_settings()["DATABASE_URL"])
    missing = database is not None and not os.path.exists(database)
    if command not in STORELESS_COMMANDS and missing:
        raise click.ClickException(f"no store at {database} yet: 'dolibarr-webhooks serve' (or 'migrate') "
                                   f"creates it; run this command where the service runs, or set "
                                   f"DOLIBARR_WEBHOOKS_DATABASE_URL")
    # events, plugins, send: nothing to store, so no file to create.
    return create_app({"ANNOUNCE": False, **({"AUTO_MIGRATE": False} if missing else {})})


class _Commands(FlaskGroup):
    """Only the ``webhooks`` commands, listed without building the app: Flask's group would
    load it (and create the store) to list the app's other command groups, itself included."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return click.Group.list_commands(self, ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return click.Group.get_command(self, ctx, name)


def main() -> None:
    """``dolibarr-webhooks``: the ``webhooks`` commands, bound to the app."""
    # load_dotenv off: the settings read .env themselves and know which value came from it.
    group = _Commands(create_app=_create_cli_app, add_default_commands=False, add_version_option=True,
                      load_dotenv=False,
                      help="Receive, inspect and replay Dolibarr webhooks (see 'flask --app dolibarr_webhooks').")
    for name, command in webhooks.commands.items():
        group.add_command(command, name)
    try:
        group.main(prog_name="dolibarr-webhooks")
    except ConfigError as exc:  # a bad setting or plugin: one plain line, not a traceback
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


from . import check  # noqa: E402,F401  (registers the check command on the group)
