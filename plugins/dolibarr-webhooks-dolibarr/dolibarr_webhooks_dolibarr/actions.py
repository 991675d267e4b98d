"""Actions on Dolibarr, configured per trigger code, run once the event is committed.

Dolibarr posts the webhook from inside the user's transaction, which can still be rolled back
after the post: each action re-reads the object first and does nothing (logged) when its state
is not what the event says. Each is idempotent across retries: ``create_order`` looks for an
order already linked to the proposal (made by an earlier attempt whose answer was lost, or by
Dolibarr's Workflow module) before it creates one, since Dolibarr's ``createfromproposal`` makes
a new order at every call; ``build_pdf`` regenerates the same file.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable

from dolibarr_webhooks import Event, PermanentFailure
from dolibarr_webhooks.pluginkit import plugin_logger

from .api import Client, NotFound, row_id

log = plugin_logger("dolibarr")

# Dolibarr's element -> (REST resource, builddoc modulepart, what a person calls it). The
# modulepart is the element's own, French name: the one every Dolibarr accepts (recorded:
# "facture" and "invoice" both build an invoice's PDF).
RESOURCES = {
    "propal": ("proposals", "propal", "proposal"),
    "commande": ("orders", "commande", "order"),
    "facture": ("invoices", "facture", "invoice"),
}
SIGNED = 2  # Propal::STATUS_SIGNED


def status(obj: dict[str, Any]) -> int | None:
    """The object's status: an integer for proposals, a string for orders and invoices."""
    value = obj.get("status", obj.get("statut"))
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def linked_ids(obj: dict[str, Any], element: str) -> list[str]:
    """Ids of the objects of type ``element`` linked to ``obj``: ``linkedObjectsIds`` is
    ``{"commande": {"<link id>": "<order id>"}}``, or ``[]`` when there is none."""
    links = obj.get("linkedObjectsIds")
    found = links.get(element) if isinstance(links, dict) else None
    if isinstance(found, dict):
        return [str(value) for value in found.values()]
    return [str(value) for value in found] if isinstance(found, list) else []


def committed(event: Event, client: Client) -> dict[str, Any] | None:
    """The object as Dolibarr has it now, or None when it is gone (rolled back or deleted)."""
    resource, _, noun = RESOURCES[event.element or ""]
    try:
        obj = client.call("GET", f"{resource}/{row_id(event.object_id)}")
    except NotFound:
        log.warning("%s %s: %s %s not found in Dolibarr (rolled back or deleted): nothing done", event.trigger_code,
                    event.id, noun, event.object_id)
        return None
    if not isinstance(obj, dict):
        raise PermanentFailure(f"{client.where}: GET /{resource}/{event.object_id} gave no object")
    return obj


def create_order(event: Event, client: Client) -> None:
    """``PROPAL_CLOSE_SIGNED``: the order, from the signed proposal, once."""
    proposal = committed(event, client)
    if proposal is None:
        return
    ref = proposal.get("ref") or event.object_id
    if status(proposal) != SIGNED:
        log.warning("%s %s: proposal %s has status %s in Dolibarr, not signed (%d): the signature was rolled back "
                    "or changed since; no order created", event.trigger_code, event.id, ref, status(proposal), SIGNED)
        return
    orders = linked_ids(proposal, "commande")
    if orders:
        log.info("%s %s: proposal %s already has order %s; none created", event.trigger_code, event.id, ref,
                 ", ".join(orders))
        return
    try:
        order = client.call("POST", f"orders/createfromproposal/{int(proposal['id'])}")
    except NotFound:
        log.warning("%s %s: proposal %s was deleted meanwhile; no order created", event.trigger_code, event.id, ref)
        return
    log.info("%s %s: order %s created from proposal %s", event.trigger_code, event.id,
             order.get("id") if isinstance(order, dict) else order, ref)


def build_pdf(event: Event, client: Client) -> None:
    """``*_VALIDATE``: the object's PDF, generated with its default model."""
    obj = committed(event, client)
    if obj is None:
        return
    _, modulepart, noun = RESOURCES[event.element or ""]
    ref = str(obj.get("ref") or "")
    if (status(obj) or 0) < 1 or not ref or ref.startswith("(PROV"):
        log.warning("%s %s: %s %s is a draft or cancelled in Dolibarr (status %s): the validation was rolled back; "
                    "no PDF built", event.trigger_code, event.id, noun, ref or event.object_id, status(obj))
        return
    try:
        built = client.call("PUT", "documents/builddoc",
                            body={"modulepart": modulepart, "original_file": f"{ref}/{ref}.pdf"})
    except NotFound as exc:
        raise PermanentFailure(f"{exc} (building the PDF of {noun} {ref})") from None
    log.info("%s %s: built %s (%s bytes)", event.trigger_code, event.id, built.get("filename"), built.get("filesize"))


ACTIONS: dict[str, Callable[[Event, Client], None]] = {"create_order": create_order, "build_pdf": build_pdf}


def settle(event: Event, delay: float) -> None:
    """Wait until ``delay`` seconds after the event arrived: Dolibarr commits after its post."""
    age = (datetime.now(timezone.utc) - event.received_at).total_seconds()
    if delay > age:
        time.sleep(delay - age)  # a retry, long after, does not wait


def run(event: Event, names: tuple[str, ...], client: Client, settle_delay: float) -> None:
    if event.element not in RESOURCES or row_id(event.object_id) is None:
        log.warning("%s %s: no %s id in the event; actions %s skipped", event.trigger_code, event.id,
                    event.element, ", ".join(names))
        return
    settle(event, settle_delay)
    for name in names:
        ACTIONS[name](event, client)
