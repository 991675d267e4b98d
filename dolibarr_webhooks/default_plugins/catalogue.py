"""The Dolibarr catalogue: every trigger code Dolibarr emits, with its labels."""

from __future__ import annotations

from ..events import ALIAS_PREFIXES, dolibarr_codes, label
from ..hookspecs import hookimpl


@hookimpl
def register_events(register):
    for known in dolibarr_codes():
        code = known.code
        aliases = [alias + code[len(real):] for alias, real in ALIAS_PREFIXES.items()
                   if code.startswith(real) and not code.startswith("PROPAL_SUPPLIER")]
        register(code, element=known.element, label_en=label(code, "en"), label_fr=label(code, "fr"),
                 offered=bool(known.offered), aliases=aliases, module=known.module, never_fired=known.never_fired)
