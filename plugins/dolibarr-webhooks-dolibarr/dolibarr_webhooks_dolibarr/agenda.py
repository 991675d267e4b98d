"""What another plugin did, recorded as an agenda event on the object's card in Dolibarr.

One ``POST /agendaevents`` per outcome, of type ``AC_OTH_AUTO`` (Dolibarr's "automatically
inserted events") with the plugin's own ``code`` (``AC_DOLIBARR_WEBHOOKS``), linked to the object
(``elementtype``/``fk_element``) and its third party (``socid``), owned by the API user. The
note ends with a marker line naming the event, the plugin and the outcome: before writing, the
plugin lists its own events on that object and writes nothing when the marker is there (the
core retries a failed call, and an answer lost after Dolibarr saved the event must not make two).
"""

from __future__ import annotations

import re
from typing import Any

from dolibarr_webhooks import PermanentFailure
from dolibarr_webhooks.pluginkit import DEAD, Outcome, plugin_logger, summary

from .api import Client, row_id

log = plugin_logger("dolibarr")

# Dolibarr stores some element types under another name than the object's ``element``
# (ActionComm::create; recorded: "facture" posted, "invoice" read back and filtered on).
STORED_ELEMENT_TYPES = {"facture": "invoice", "commande": "order", "contrat": "contract"}
# The code of the agenda events the plugin writes (their type stays AC_OTH_AUTO): it finds them by it.
OWN_CODE = "AC_DOLIBARR_WEBHOOKS"
ELEMENT_TYPE = re.compile(r"^[a-z_]+$")  # goes into an sqlfilters string: nothing else may
LABEL_LENGTH = 255  # llx_actioncomm.label

# How a person says what each known plugin did (delivered, dead); others get their name.
PLUGIN_WORDS = {
    "email": ("Email sent", "Email NOT sent"),
    "slack": ("Slack notified", "Slack NOT notified"),
    "sync": ("Forwarded to other software", "NOT forwarded to other software"),
}


def target(outcome: Outcome) -> dict[str, Any] | None:
    """Where the agenda event goes: ``elementtype``, ``fk_element`` and, when known, ``socid``."""
    event = outcome.event
    element, object_id = event.element or "", row_id(event.object_id)
    if object_id is None or not ELEMENT_TYPE.match(element) or element == "action":
        return None  # no object to attach to; or an agenda event itself (written back, it would echo)
    if event.trigger_code.endswith("_DELETE"):
        return None  # the card is gone
    linked: dict[str, Any] = {"elementtype": STORED_ELEMENT_TYPES.get(element, element), "fk_element": object_id}
    socid = object_id if element == "societe" else row_id(event.object.get("socid") or event.object.get("fk_soc"))
    if socid is not None:
        linked["socid"] = socid
    return linked


def label(outcome: Outcome) -> str:
    """``Email sent: Third party Acme Industries created (billing@acme.example)``."""
    done, failed = PLUGIN_WORDS.get(outcome.plugin, (f"{outcome.plugin} done", f"{outcome.plugin} failed"))
    text = f"{failed if outcome.kind == DEAD else done}: {summary(outcome.event)}"
    return text if len(text) <= LABEL_LENGTH else text[:LABEL_LENGTH - 1] + "…"


def marker(outcome: Outcome) -> str:
    kind = "dead" if outcome.kind == DEAD else "delivered"  # a recovery is a delivery
    return f"dolibarr-webhooks: event {outcome.event.id}, plugin {outcome.plugin}, {kind}"


def note(outcome: Outcome) -> str:
    event = outcome.event
    attempts = f"{outcome.attempts} attempt{'s' * (outcome.attempts != 1)}"
    lines = [f"{event.trigger_code} handled by the {outcome.plugin} plugin of dolibarr-webhooks: "
             f"{'dead after' if outcome.kind == DEAD else 'delivered in'} {attempts}."]
    if outcome.kind == DEAD:
        lines.append(f"Last error: {outcome.error or 'none recorded'}")
        lines.append(f"Replay: {outcome.replay_command}")
        if outcome.dashboard_url:
            lines.append(f"Dashboard: {outcome.dashboard_url}")
    lines.append(marker(outcome))
    return "\n".join(lines)


def write_back(outcome: Outcome, client: Client) -> int | None:
    """Record ``outcome`` on its object's card; the agenda event's id (None when there is no card)."""
    linked = target(outcome)
    if linked is None:
        return None
    found = client.call("GET", "agendaevents", {
        # Columns, not API property names: fk_element, not elementid (which Dolibarr answers with 503).
        "sqlfilters": f"(t.code:=:'{OWN_CODE}') and (t.elementtype:=:'{linked['elementtype']}') "
                      f"and (t.fk_element:=:{linked['fk_element']})",
        "properties": "id,note_private", "sortfield": "t.id", "sortorder": "DESC", "limit": 500})
    wanted = marker(outcome)
    for existing in found if isinstance(found, list) else ():
        if isinstance(existing, dict) and wanted in str(existing.get("note_private") or "").splitlines():
            log.info("%s: already on the card as agenda event %s", wanted, existing.get("id"))
            return row_id(existing.get("id"))
    body = {"type_code": "AC_OTH_AUTO", "code": OWN_CODE, "label": label(outcome), "note_private": note(outcome),
            "datep": int(outcome.at.timestamp()), "percentage": -1, "userownerid": client.api_user(), **linked}
    created = row_id(client.call("POST", "agendaevents", body=body))
    if created is None:  # Dolibarr answers the new row's id; something else answered
        raise PermanentFailure(f"{client.where}: POST /agendaevents answered no agenda event id")
    log.info("%s: agenda event %s on %s %s", wanted, created, linked["elementtype"], linked["fk_element"])
    return created
