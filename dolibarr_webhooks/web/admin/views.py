"""The dashboard's pages. Each page's changing part is a template of its own, which the page's
script fetches again every few seconds (``?fragment=1``) and puts in place."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import click
from flask import abort, current_app, flash, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from ...store import dashboard as queries
from ...events import canonical_code
from ...describe import summary
from ...events import Event
from ...labels import encodable
from ...logs import SecretScrubber
from ...listing import scheduled_again
from ...logs import redact
from ...pipeline.parse import is_empty_body
from ...store import DEAD, DELIVERY_STATES, FAILED, STORE_ERRORS, unavailable
from . import csrf, i18n
from .blueprint import bp
from .charts import events_chart, latency_chart
from .i18n import gettext as _

logger = logging.getLogger(__name__)

DAY = 86400.0
REFRESH_SECONDS = 5


def service():
    return current_app.extensions["dolibarr_webhooks"]


def masked(text: str | None) -> str:
    """Any text from the store or a plugin, with every secret the settings know masked (a
    plugin's error may quote its password, a URL its token)."""
    if not text:
        return text or ""
    scrubber = SecretScrubber()
    scrubber.add(service().settings.sensitive_values)
    return scrubber.mask(text)


STATS_MAX_AGE = 15.0
_STATS = "dolibarr_webhooks_admin_stats"


def stats() -> dict[str, Any]:
    """``Store.stats()`` (the CLI's ``stats``), computed at most every 15 s by each process: it
    counts every row (about 1 s at 1,000,000 events on SQLite) and the overview refreshes
    itself every few seconds in every open tab."""
    cached = current_app.extensions.get(_STATS)
    if cached is None or time.monotonic() - cached[0] > STATS_MAX_AGE:
        cached = current_app.extensions[_STATS] = (time.monotonic(), service().store.stats())
    return cached[1]


def page(template: str, fragment: str, **context: Any):
    """The whole page, or only its changing part when the page's script asks for it."""
    context["fragment_template"] = fragment
    if request.args.get("fragment"):
        return render_template(fragment, **context)
    return render_template(template, **context)


def code_label(code: str) -> str:
    known = service().plugins.catalogue.get(code)
    if known is None:
        return code
    return known.label_fr if i18n.language() == "fr" and known.label_fr else known.label_en


def describe_row(row: dict[str, Any]) -> str:
    """What happened, in words, in the page's language."""
    if row["payload"]:
        return summary(Event.from_dict(row["payload"]), i18n.language())
    if row["status"] == "quarantined":
        return f"{_('quarantined')}: {masked(row['error'])}"
    if row["duplicate_of"]:
        return f"{row['trigger_code']} {row['label'] or ''}: {_('duplicate of')} {row['duplicate_of']}"
    return row["trigger_code"] or "-"


# -- overview ------------------------------------------------------------------------------------
@bp.route("/")
def overview():
    svc = service()
    now = time.time()
    since = now - DAY
    workers = queries.workers_seen(svc.store)
    return page("admin/overview.html", "admin/_overview.html",
                stats=stats(), oldest=queries.oldest_waiting(svc.store), workers=workers,
                alive=[w for w in workers if w["alive"]],
                events_svg=events_chart(queries.events_per_hour(svc.store, since), now, code_label),
                latency_svg=latency_chart(queries.latency_per_hour(svc.store, since), now),
                store_url=redact(svc.settings["DATABASE_URL"], keep_user=True), now=now)


# -- events ----------------------------------------------------------------------------------------
def _moment(value: str | None, name: str) -> float | None:
    """A duration back from now (2h) or an ISO date or time, as ``--since`` reads it."""
    from ...listing import since_time as _since

    if not value:
        return None
    try:
        return _since(value)
    except click.BadParameter:
        flash(f"{name}: {value!r}?", "error")
        return None


def _cursor(value: str | None) -> tuple[float, str] | None:
    at, _sep, event_id = (value or "").partition(":")
    try:
        return (float(at), event_id) if event_id else None
    except ValueError:
        return None


@bp.route("/events")
def events():
    svc = service()
    args = request.args
    status = args.get("status") if args.get("status") in queries.STATUS_FILTERS else None
    filters = queries.EventFilter(
        code=canonical_code(args.get("code") or "") or None, source=args.get("source") or None, status=status,
        since=_moment(args.get("since"), _("From")), until=_moment(args.get("until"), _("To")),
        search=(args.get("q") or "").strip() or None, before=_cursor(args.get("before")))
    rows, resume = queries.events_page(svc.store, filters)
    statuses = queries.delivery_statuses(svc.store, [row["id"] for row in rows])
    for row in rows:
        row["summary"] = describe_row(row)
        row["deliveries"] = statuses[row["id"]]
    kept = {k: v for k, v in args.items() if k not in ("before", "fragment", "lang") and v}
    older = url_for("admin.events", **kept, before=f"{resume[0]!r}:{resume[1]}") if resume else None
    codes = [(code, code_label(code)) for code in svc.plugins.event_codes()]
    return page("admin/events.html", "admin/_events.html", rows=rows, older=older, filters=filters, args=args,
                codes=codes, sources=sorted(svc.sources), statuses=list(queries.STATUS_FILTERS),
                newest=url_for("admin.events", **kept) if filters.before else None)


def _json_tree(value: Any, depth: int = 0) -> Markup:
    """The payload as nested, foldable blocks: the first levels open, Dolibarr's invoice lines
    (hundreds of objects, each whole) folded."""
    if isinstance(value, dict) and value or isinstance(value, list) and value:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        inner = Markup("").join(
            Markup('<div class="json-item"><span class="json-key">{}</span>: {}</div>').format(
                encodable(key) if isinstance(value, dict) else f"[{key}]", _json_tree(item, depth + 1))
            for key, item in items)
        brackets = "{}" if isinstance(value, dict) else "[]"
        opened = " open" if depth < 2 and len(value) < 100 else ""
        return Markup('<details class="json"{}><summary>{} {} {}</summary>{}</details>').format(
            Markup(opened), brackets[0], len(value), brackets[1], inner)
    # A lone surrogate (a forged "\\ud800", kept as sent) as the escape it came as: a page, as
    # any text sent out, is UTF-8, which cannot hold one.
    return Markup('<span class="json-value">{}</span>').format(encodable(json.dumps(value, ensure_ascii=False)))


def _number_runs(attempts: list[dict[str, Any]]) -> int:
    from ...listing import number_runs

    return number_runs(attempts)


@bp.route("/events/<event_id>")
def event(event_id: str):
    svc = service()
    data = svc.store.show(event_id)
    if data is None:
        abort(404, _("No event with this id."))
    payload = data["payload"]
    if payload:
        # As `show`: what was stored before credentials were masked is never shown with them.
        payload = svc.scrubber(data["source"]).scrub(payload)
        payload = json.loads(masked(json.dumps(payload, ensure_ascii=False)))
        source = svc.sources.get(data["source"])
        event_obj = Event.from_dict({**payload, "dolibarr_url": (source.dolibarr_url if source else None)
                                     or payload.get("dolibarr_url")})
        data["summary"] = summary(event_obj, i18n.language())
        data["card_url"] = event_obj.card_url
    else:
        data["summary"] = describe_row({**data, "payload": None})
        data["card_url"] = None
    for delivery in data["deliveries"]:
        delivery["runs"] = _number_runs(delivery["attempts_log"])
        delivery["last_error"] = masked(delivery["last_error"])
        for attempt in delivery["attempts_log"]:
            attempt["error"] = masked(attempt["error"])
    having = {d["plugin"] for d in data["deliveries"]}
    missing = [p for p in svc.plugins.handlers_for(data["trigger_code"]) if p not in having] \
        if data["status"] == "accepted" else []
    return page("admin/event.html", "admin/_deliveries.html", event=data, missing=missing,
                payload_tree=_json_tree(payload) if payload else None, code_label=code_label(data["trigger_code"]))


@bp.route("/events/<event_id>/replay", methods=["POST"])
def replay_event(event_id: str):
    # The same call as `dolibarr-webhooks replay EVENT_ID [--plugin P]`.
    _replay(event_id=event_id, plugin=request.form.get("plugin") or None)
    return redirect(url_for("admin.event", event_id=event_id))


def _replay(**what: Any) -> None:
    try:
        count = service().replay(**what)
    except ValueError as exc:  # a plugin no form offers
        flash(str(exc), "error")
        return
    flash(f"{count} {_(scheduled_again(count))}", "ok")


# -- failures ---------------------------------------------------------------------------------------
FAILURE_VIEWS = {"": (FAILED, DEAD), DEAD: (DEAD,), FAILED: (FAILED,)}


@bp.route("/failures")
def failures():
    svc = service()
    shown = request.args.get("status", "") if request.args.get("status", "") in FAILURE_VIEWS else ""
    plugin = request.args.get("plugin") or None
    groups = queries.failure_groups(svc.store, plugin=plugin, statuses=FAILURE_VIEWS[shown])
    for group in groups:
        group["last_error"] = masked(group["last_error"])
    return page("admin/failures.html", "admin/_failures.html", groups=groups, shown=shown, plugin=plugin,
                plugins=svc.plugins.handlers())


@bp.route("/failures/replay", methods=["POST"])
def replay_failures():
    shown = request.form.get("status", "") if request.form.get("status", "") in FAILURE_VIEWS else ""
    plugin = request.form.get("plugin") or None
    # The same call as `dolibarr-webhooks replay --dead --failed [--plugin P]`.
    _replay(statuses=FAILURE_VIEWS[shown], plugin=plugin)
    return redirect(url_for("admin.failures", status=shown or None, plugin=plugin))


# -- quarantine -------------------------------------------------------------------------------------
@bp.route("/quarantine")
def quarantine():
    rows = []
    for row in service().store.quarantined():
        raw = row.pop("raw_body") or b""
        # Kept masked at ingest (Scrubber.scrub_raw); masked again for the settings' secrets.
        rows.append({**row, "size": len(raw), "empty": is_empty_body(raw), "error": masked(row["error"]),
                     "excerpt": masked(raw[:400].decode("utf-8", "replace"))})
    rows.reverse()  # newest first
    return page("admin/quarantine.html", "admin/_quarantine.html", rows=rows)


@bp.route("/quarantine/reprocess", methods=["POST"])
def reprocess():
    # The same call as `dolibarr-webhooks reprocess [EVENT_ID]`.
    results = service().reprocess(request.form.get("event_id") or None)
    for event_id, result in results:
        flash(f"{event_id}: {masked(result)}", "ok")
    return redirect(url_for("admin.quarantine"))


# -- plugins ----------------------------------------------------------------------------------------
@bp.route("/plugins")
def plugins():
    from ...report import Report
    from ...report import describe_plugin as _describe_plugin
    from ...report import mask_report as _mask

    svc = service()
    counts_by_plugin = stats()["plugins"]
    outcomes = queries.attempt_outcomes(svc.store, time.time() - DAY)
    report = Report()
    rows = []
    for info in svc.plugins.info.values():
        _describe_plugin(report, info)
        counts = counts_by_plugin.get(info.name, {})
        tried = outcomes.get(info.name, {})
        total = sum(tried.values())
        failed = total - tried.get("delivered", 0)
        waiting = sum(counts.get(state, 0) for state in ("pending", "running", "failed"))
        rows.append({"info": info, "reason": masked(info.reason), "queue": waiting,
                     "dead": counts.get(DEAD, 0), "attempts": total,
                     "failure_rate": (failed / total) if total else None})
    _mask(report, svc.settings)  # as `check` does: no finding quotes a secret
    return page("admin/plugins.html", "admin/_plugins.html", rows=rows, findings=report.findings)


# -- errors: the dashboard's own pages, never a stack trace -------------------------------------------
def _error(exc: Exception):
    if isinstance(exc, STORE_ERRORS):  # the store is down or full: said, not a traceback
        line = unavailable(service().store.url, exc)
        logger.error("dashboard: %s %s: %s", request.method, request.endpoint, line)
        code, message = 503, masked(f"{_('The store is unavailable; try again in a moment.')} ({line})")
    elif not isinstance(exc, HTTPException):
        logger.exception("dashboard: unexpected error on %s %s", request.method, request.endpoint)
        code, message = 500, _("The dashboard failed; the error is in the service's log.")
    elif exc.code == 400 and exc.description == "csrf":
        code, message = 400, _("The form has expired or did not come from this page: try again.")
    else:
        code, message = exc.code or 500, exc.description if exc.code == 404 else exc.name
    return render_template("admin/error.html", code=code, message=message), code


bp.register_error_handler(HTTPException, _error)
bp.register_error_handler(Exception, _error)


@bp.context_processor
def _template_helpers() -> dict[str, Any]:
    return {"_": _, "when": i18n.when, "ago": i18n.ago, "number": i18n.number, "csrf_token": csrf.token,
            "language": i18n.language(), "refresh_seconds": REFRESH_SECONDS, "states": DELIVERY_STATES}
