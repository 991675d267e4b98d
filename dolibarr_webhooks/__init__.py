"""dolibarr-webhooks: receive Dolibarr's webhooks, keep them, hand them to plugins."""

from __future__ import annotations

from .events import Event
from .exceptions import ConfigError, PermanentFailure, PluginDisabled, RetryLater
from .hookspecs import hookimpl
from .version import __version__


def create_app(test_config=None):
    """The Flask application factory: ``gunicorn 'dolibarr_webhooks:create_app()'``, and
    ``flask --app dolibarr_webhooks webhooks ...``: the web application and its commands.
    Imported when called: ``import dolibarr_webhooks`` (a plugin's) loads no Flask."""
    from .cli import as_a_command_says_it, init_app
    from .web.app import create_app as create_web_app

    with as_a_command_says_it(test_config):
        app = create_web_app(test_config)
    init_app(app)
    return app


__all__ = ["create_app", "hookimpl", "Event", "ConfigError", "PermanentFailure", "PluginDisabled",
           "RetryLater", "__version__"]
