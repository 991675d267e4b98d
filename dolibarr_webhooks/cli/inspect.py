"""Commands that read: what is registered (events, plugins), and the store (stats,
deliveries, one event's story, one object's history)."""

from __future__ import annotations

import click

from ..describe import summary
from ..events import FAMILIES, Event, canonical_code
from ..listing import event_rows, number_runs, plugin_rows
from ..store import DELIVERY_STATES, FAILED
from .group import emit, json_option, plural, service, shortened, since_time, table, webhooks, when


@webhooks.command("events")
@json_option
@click.option("--handled", is_flag=True, help="Only events some plugin handles.")
def events_command(as_json: bool, handled: bool) -> None:
    """List every known or handled event code, its label, object type and plugins."""
    rows = [r for r in event_rows(service().plugins) if r["plugins"] or not handled]
    lines = table([[r["code"] + (" (never fired)" if r["never_fired"] else ""), r["label"], r["element"] or "-",
                    r["module"] or "-", ",".join(r["plugins"]) or "-", ",".join(r["aliases"])] for r in rows],
                  ["Code", "Label", "Object", "Module", "Plugins", "Also accepted as"])
    lines += ["", "'Also accepted as': names some guides use; such events are stored under Dolibarr's code."]
    never = [r["code"] for r in rows if r["never_fired"]]
    if never:
        lines.append(f"never fired: {', '.join(never)} (offered by Dolibarr's target form, fired by no release: "
                     "a target subscribed to it gets nothing)")
    emit(rows, as_json, lines)


@webhooks.command("plugins")
@json_option
def plugins_command(as_json: bool) -> None:
    """List loaded plugins: name, version, hooks, events and status."""
    rows = plugin_rows(service().plugins)
    emit(rows, as_json, table(
        [[r["name"], r["version"] or "-", ",".join(r["hooks"]),
          "all" if r["events"] is None else ",".join(r["events"]) or "none",
          r["status"] + (f" ({r['reason']})" if r["reason"] else "")] for r in rows],
        ["Name", "Version", "Hooks", "Events", "Status"]))


@webhooks.command("stats")
@json_option
def stats_command(as_json: bool) -> None:
    """Events, deliveries by status and by plugin, oldest pending age."""
    stats = service().store.stats()
    age = stats["oldest_pending_age"]
    lines = [f"events: {stats['events']} (duplicates {stats['duplicates']}, quarantined {stats['quarantined']})",
             "deliveries: " + ", ".join(f"{k} {v}" for k, v in stats["deliveries"].items()),
             f"oldest pending: {'none' if age is None else f'{age} s'}",
             f"duplicate runs: {stats['duplicate_runs']}"]
    lines += table([[p] + [str(c[s]) for s in DELIVERY_STATES] for p, c in sorted(stats["plugins"].items())],
                   ["Plugin", *DELIVERY_STATES])
    emit(stats, as_json, lines)


@webhooks.command("deliveries")
@click.option("--status", type=click.Choice(DELIVERY_STATES))
@click.option("--plugin")
@click.option("--code", help="Trigger code.")
@click.option("--since", help="A duration back from now (2h) or an ISO date.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
def deliveries_command(status, plugin, code, since, limit, as_json) -> None:
    """List deliveries, newest event first."""
    rows = service().store.list_deliveries(status=status, plugin=plugin, code=code and code.upper(),
                                           since=since_time(since), limit=limit)
    emit(rows, as_json, table(
        [[r["event_id"], r["trigger_code"], r["label"] or r["ref"] or "-", r["plugin"], r["status"],
          str(r["attempts"]), when(r["next_attempt_at"]) if r["status"] in ("pending", FAILED) else "-",
          shortened(r["last_error"], 100)] for r in rows],
        ["Event", "Code", "Object", "Plugin", "Status", "Attempts", "Next", "Last error"]))


@webhooks.command("show")
@click.argument("event_id")
@json_option
def show_command(event_id: str, as_json: bool) -> None:
    """Show one event, its deliveries, attempts, errors and timings."""
    data = service().store.show(event_id)
    if data is None:
        raise click.ClickException(f"no event {event_id}")
    if data["payload"]:
        # What was stored before credentials were masked is never shown with them.
        data["payload"] = service().scrubber(data["source"]).scrub(data["payload"])
    lines = [f"event {data['id']}  {data['trigger_code'] or '(unparsed)'}  {data['status']}",
             f"received {when(data['received_at'])} from source {data['source']} ({data['remote_addr'] or '-'})"]
    if data["payload"]:
        lines.append("  " + summary(Event.from_dict(data["payload"])))
    if data["duplicate_of"]:
        # A duplicate keeps no payload: its body is the original's.
        lines.append(f"  duplicate of {data['duplicate_of']} (the same body): "
                     f"dolibarr-webhooks show {data['duplicate_of']}")
    if data["error"]:
        lines.append(f"  note: {data['error']}")
    for d in data["deliveries"]:
        runs = number_runs(d["attempts_log"])
        made = plural(d["attempts"], "attempt") + (f" in run {runs} ({plural(len(d['attempts_log']), 'attempt')} "
                                                   f"in all)" if runs > 1 else "")
        lines.append(f"- {d['plugin']}: {d['status']}, {made}"
                     + (f", last error: {d['last_error']}" if d["last_error"] else ""))
        for a in d["attempts_log"]:
            run = f"run {a['run']} " if runs > 1 else ""
            lines.append(f"    {run}#{a['number']} {when(a['started_at'])} {a['outcome']} {a['duration_ms']:.1f} ms"
                         f" on {a['worker']}" + (f": {a['error']}" if a["error"] else ""))
    emit(data, as_json, lines)


def _element(kind: str) -> str:
    """Dolibarr's object type from what a person types: ``societe``, ``COMPANY``, ``thirdparty``."""
    family = canonical_code(kind + "_X")[:-2]
    return FAMILIES[family][0] if family in FAMILIES else kind.lower()


@webhooks.command("history")
@click.argument("kind")
@click.argument("object_id")
@click.option("--source", help="Only this source's events.")
@json_option
def history_command(kind: str, object_id: str, source: str | None, as_json: bool) -> None:
    """Every event of one Dolibarr object, oldest first: 'history societe 16' (or COMPANY 16)."""
    element = _element(kind)
    rows = service().store.object_events(element, object_id, source=source)
    emit(rows, as_json, table(
        [[when(r["received_at"]), r["trigger_code"], r["label"] or "-", r["status"], r["id"]] for r in rows],
        ["Received", "Code", "Object", "Status", "Event"]) if rows else f"no event of {element} {object_id}")
