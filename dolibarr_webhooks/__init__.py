"""dolibarr-webhooks: receive Dolibarr's webhooks, keep them, hand them to plugins."""

from __future__ import annotations

from .event import Event
from .exceptions import ConfigError, PermanentFailure, PluginDisabled, RetryLater
from .hookspecs import hookimpl

__version__ = "0.1.0"


def create_app(test_config=None):
    """The Flask application factory: ``gunicorn 'dolibarr_webhooks:create_app()'``."""
    from .app import create_app as _create_app

    return _create_app(test_config)


__all__ = ["create_app", "hookimpl", "Event", "ConfigError", "PermanentFailure", "PluginDisabled",
           "RetryLater", "__version__"]
