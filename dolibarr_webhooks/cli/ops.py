"""Commands that act: send a sample, run the worker, scrub, replay, purge, re-process,
migrate."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from ..credentials import expected_rules
from ..listing import scheduled_again
from ..logs import redact
from ..samples import sample_body, sample_codes
from ..settings import parse_duration, parse_url
from ..startup import freeze_startup_objects
from ..store import DEAD, FAILED
from .group import emit, json_option, plural, service, since_time, webhooks


@webhooks.command("send")
@click.argument("code")
@click.option("--payload", type=click.Path(exists=True, dir_okay=False), help="Body to send (default: a sample).")
@click.option("--url", help="The URL given to Dolibarr, secret included (default: this service on localhost, "
                            "with its secret).")
@click.option("--port", type=int, default=None,
              help="This service's port on localhost, as given to serve (default DOLIBARR_WEBHOOKS_PORT, "
                   "WEBHOOK_PORT or 8080).")
def send_command(code: str, payload: str | None, url: str | None, port: int | None) -> None:
    """Post a sample event to a running service, as Dolibarr would."""
    import urllib.error
    import urllib.request

    if payload:
        body = Path(payload).read_bytes()
    else:
        try:
            body = sample_body(code)
        except KeyError:
            body = json.dumps({"triggercode": code.upper(), "object": {"id": 1, "ref": "SAMPLE"}}).encode()
            click.echo(f"no sample body for {code} (samples: {', '.join(sample_codes())}); sending a minimal one")
    hint = ""
    if url is not None:
        try:  # checked by the settings' rule for URLs (urllib raised a bare ValueError), sent as given
            if not parse_url(url):
                raise ValueError("is empty")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--url") from None
    else:
        settings = service().settings
        secrets = settings.secrets
        port = port or settings["PORT"]
        url = f"http://127.0.0.1:{port}/webhook" + (f"/{secrets[0]}" if secrets else "")
        hint = f" (is 'dolibarr-webhooks serve' running on port {port}? If it was given --port, give send the same)"
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "User-Agent": "Dolibarr geturl function", "Accept": "*/*", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach {redact(url)}: {exc}{hint}") from None
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
    worker = service().delivery_worker(name)

    def stop(signum, _frame):
        click.echo(f"signal {signum}: finishing running handlers, then stopping", err=True)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    freeze_startup_objects()  # the plugins and the store are loaded: out of the full collections
    worker.run(stop_after_idle=until_idle)


@webhooks.command("scrub")
@json_option
def scrub_command(as_json: bool) -> None:
    """Mask credentials in events stored before the current scrub rule (and label them)."""
    svc = service()
    done = svc.store.rescrub(svc.scrubber, *expected_rules(svc.sources))
    emit(done, as_json, f"{plural(done['read'], 'event')} scrubbed again under the current rule, "
         f"{done['changed']} of them changed")


@webhooks.command("replay")
@click.argument("event_id", required=False)
@click.option("--dead", is_flag=True, help="Every dead delivery.")
@click.option("--failed", is_flag=True, help="Every delivery waiting for a retry (run it now).")
@click.option("--since", help="Deliveries of events received since (2h, or an ISO date).")
@click.option("--plugin", help="Only this plugin's deliveries (creates it for EVENT_ID if missing).")
@json_option
def replay_command(event_id, dead, failed, since, plugin, as_json) -> None:
    """Run deliveries again, now, with a fresh retry budget."""
    if not (event_id or dead or failed or since):
        raise click.UsageError("give an EVENT_ID, --dead, --failed or --since")
    statuses = [s for s, on in ((DEAD, dead), (FAILED, failed)) if on]
    try:
        count = service().replay(event_id=event_id, statuses=statuses, since=since_time(since), plugin=plugin)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--plugin") from None
    emit({"replayed": count}, as_json, f"{count} {scheduled_again(count)}")


@webhooks.command("purge")
@click.option("--older-than", required=True, help="Age, e.g. 30d.")
@click.option("--include-unfinished", is_flag=True, help="Also events with failed or dead deliveries.")
@json_option
def purge_command(older_than: str, include_unfinished: bool, as_json: bool) -> None:
    """Delete old events whose deliveries are all done."""
    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    count = service().store.purge(age, include_unfinished=include_unfinished)
    emit({"purged": count}, as_json, f"{plural(count, 'event')} purged")


@webhooks.command("reprocess")
@click.argument("event_id", required=False)
@json_option
def reprocess_command(event_id: str | None, as_json: bool) -> None:
    """Parse quarantined bodies again and ingest those that parse now."""
    results = service().reprocess(event_id)
    emit([{"id": i, "result": r} for i, r in results], as_json,
         [f"{i}: {r}" for i, r in results] or ["nothing quarantined"])


@webhooks.command("migrate")
def migrate_command() -> None:
    """Bring the database schema to the latest version."""
    applied = service().store.migrate()
    click.echo(f"applied migrations {applied}" if applied else "schema is up to date")
