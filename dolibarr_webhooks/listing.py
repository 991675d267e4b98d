"""What the service has registered, as rows: every event code with its labels and the
plugins that handle it, and every plugin; and what the CLI and the dashboard both read
(``--since`` moments, runs of attempts). ``GET /webhook/events`` and the ``events`` and
``plugins`` commands show the same rows."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import click

from .settings import parse_duration


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


def since_time(value: str | None) -> float | None:
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


def number_runs(attempts: list[dict[str, Any]]) -> int:
    """Set each attempt's ``run``: attempts are numbered from 1 again after each replay. Returns the runs."""
    run, previous = 0, None
    for attempt in attempts:
        if previous is None or attempt["number"] <= previous:
            run += 1
        previous = attempt["number"]
        attempt["run"] = run
    return run


def scheduled_again(count: int) -> str:
    """What a replay says after its count, in English (the dashboard translates it):
    ``dolibarr-webhooks replay`` and the dashboard's replay buttons."""
    return "delivery scheduled again" if count == 1 else "deliveries scheduled again"
