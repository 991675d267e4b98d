"""What the service has registered, as rows: every event code with its labels and the
plugins that handle it, and every plugin. ``GET /webhook/events`` and the ``events`` and
``plugins`` commands show the same rows."""

from __future__ import annotations

from typing import Any


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
