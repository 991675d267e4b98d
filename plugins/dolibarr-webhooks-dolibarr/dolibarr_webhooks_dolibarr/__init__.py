"""Write back to Dolibarr: what the other plugins did, on the object's own card, and actions
configured per trigger code, through Dolibarr's REST API.

- ``delivery_outcome``: after another plugin's delivery is delivered (or dead), an agenda
  event on the object and its third party ("Email sent: Third party Acme Industries created").
- ``handle_event``: the actions configured for the event's trigger code (``create_order`` on
  ``PROPAL_CLOSE_SIGNED``, ``build_pdf`` on ``ORDER_VALIDATE``...), each after re-reading the
  object, each idempotent.
- Events the plugin's own API user caused are recognised and not acted on (no loops).
"""

from __future__ import annotations

from typing import Any, Mapping

from dolibarr_webhooks import Event, PermanentFailure, hookimpl
from dolibarr_webhooks.pluginkit import Outcome, plugin_logger

from . import actions, agenda
from .api import Client, __version__
from .loops import own_echo
from .settings import Settings, parse_settings

__all__ = ["__version__", "read_settings", "handled_events", "handle_event", "delivery_outcome"]

log = plugin_logger("dolibarr")


def client_for(event: Event, settings: Settings) -> Client | None:
    """The API of the event's Dolibarr; None when write-back is not set up for its source."""
    source = settings.source(event.source)
    if source is None:
        return None
    api_url = source.url_for(event.dolibarr_url)
    if api_url is None:
        raise PermanentFailure(f"no Dolibarr URL for source {event.source}: set DOLIBARR_WEBHOOKS_DOLIBARR_URL "
                               f"(or dolibarr_url of [sources.{event.source}]), or api_url for the plugin")
    return Client(settings, source, api_url)


@hookimpl
def read_settings(config: Mapping[str, Any]) -> Settings:
    return parse_settings(config)


@hookimpl
def handled_events(settings: Settings) -> list[str]:
    return sorted(settings.actions)  # none configured: only delivery outcomes are written back


@hookimpl
def handle_event(event: Event, settings: Settings) -> None:
    names = settings.actions.get(event.trigger_code)
    if not names or event.test:
        return
    client = client_for(event, settings)
    if client is None:
        log.info("%s %s: source %s has no Dolibarr API set up; actions skipped", event.trigger_code, event.id,
                 event.source)
        return
    echo = own_echo(event, client.api_user())
    if echo:
        log.info("%s %s: not acted on: %s", event.trigger_code, event.id, echo)
        return
    actions.run(event, names, client, settings.settle_delay)


@hookimpl
def delivery_outcome(outcome: Outcome, settings: Settings) -> None:
    event = outcome.event
    if event.test or not settings.writes_back(outcome.plugin, outcome.kind) or agenda.target(outcome) is None:
        return  # a test event, not asked for, or no card to write on (deleted, no object)
    try:
        client = client_for(event, settings)
        if client is None:
            return
        echo = own_echo(event, client.api_user())
        if echo:
            log.info("%s %s: %s's outcome not written back: %s", event.trigger_code, event.id, outcome.plugin, echo)
            return
        agenda.write_back(outcome, client)
    except PermanentFailure as exc:
        # Retrying cannot help (a refused key, a missing right): say so once, lose this one.
        log.error("%s %s: %s's outcome not written back: %s", event.trigger_code, event.id, outcome.plugin, exc)
