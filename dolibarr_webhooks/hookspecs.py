"""The hooks a dolibarr-webhooks plugin can implement.

Every built-in behaviour (the Dolibarr catalogue, the log line per event) is a
plugin of these same hooks. Implementations may accept fewer arguments than a
spec lists, so specs can grow without breaking plugins.

A plugin's settings are read once: ``read_settings`` turns the raw ``config``
mapping into the plugin's own checked object at start-up, and every other hook
of that plugin receives that object as ``settings`` (the raw mapping when the
plugin has no ``read_settings``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from pluggy import HookimplMarker, HookspecMarker

PROJECT_NAME = "dolibarr_webhooks"

hookspec = HookspecMarker(PROJECT_NAME)
hookimpl = HookimplMarker(PROJECT_NAME)


@hookspec
def register_events(register: Callable[..., None]) -> None:
    """Add trigger codes to the catalogue with
    ``register(code, element, label_en, label_fr, offered=False, aliases=(), module="", never_fired=False)``."""


@hookspec
def read_settings(config: Mapping[str, Any]) -> Any:
    """Check this plugin's settings once, at start-up, and return what its other hooks receive as ``settings``."""


@hookspec
def handled_events(settings: Any) -> Iterable[str] | None:
    """Return the trigger codes or patterns (``BILL_*``) this plugin handles; ``None`` means every event."""


@hookspec
def handle_event(event: Any, settings: Any) -> None:
    """Do this plugin's work for one stored event; raise to have it retried."""


@hookspec
def delivery_outcome(outcome: Any, settings: Any) -> None:
    """Hear how a delivery ended (delivered, dead, a lane that recovered), for every plugin's deliveries."""


@hookspec
def alert(alert: Any, settings: Any) -> None:
    """Tell a person about failures: at most one alert per failing plugin per interval, the rest in a digest."""
