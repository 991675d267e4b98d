"""The hooks a dolibarr-webhooks plugin can implement.

Every built-in behaviour (the Dolibarr catalogue, the log line per event) is a
plugin of these same hooks. Implementations may accept fewer arguments than a
spec lists, so specs can grow without breaking plugins.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from pluggy import HookimplMarker, HookspecMarker

PROJECT_NAME = "dolibarr_webhooks"

hookspec = HookspecMarker(PROJECT_NAME)
hookimpl = HookimplMarker(PROJECT_NAME)


@hookspec
def register_events(register: Callable[..., None]) -> None:
    """Add trigger codes to the catalogue with
    ``register(code, element, label_en, label_fr, offered=False, aliases=(), module="", never_fired=False)``."""


@hookspec
def handled_events(config: dict[str, Any]) -> Iterable[str] | None:
    """Return the trigger codes or patterns (``BILL_*``) this plugin handles; ``None`` means every event."""


@hookspec
def handle_event(event: Any, config: dict[str, Any]) -> None:
    """Do this plugin's work for one stored event; raise to have it retried."""
