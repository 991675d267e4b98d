"""Prints one human line per event, e.g. ``Invoice FA2611-0042 validated: 2,243.76 EUR incl. tax``."""

from __future__ import annotations

import logging

from ..describe import summary
from ..hookspecs import hookimpl

logger = logging.getLogger("dolibarr_webhooks.events")


@hookimpl(trylast=True)
def handle_event(event):
    logger.info("%s [%s %s from %s]", summary(event), event.trigger_code, event.id, event.source)
