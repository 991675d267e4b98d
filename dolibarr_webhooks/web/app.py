"""``create_app``: settings, plugins, store and routes of one web application (the
package's ``dolibarr_webhooks.create_app`` adds the ``webhooks`` commands to it)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask

from ..metrics import Metrics
from ..pipeline.ingest import Service
from ..plugins import build_plugins
from ..settings import Settings, load_settings, process_settings
from ..store import Store
from . import access_log, admin, errors, health, ratelimit, views
from .direct import DirectWebhook
from .request import EXTENSION

logger = logging.getLogger("dolibarr_webhooks")


def create_app(test_config: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """``settings``: already read (a command, ``serve``); else this process's settings
    (``process_settings``), or, with ``test_config``, settings read with it."""
    test_config = dict(test_config or {})
    extra_plugins = test_config.pop("EXTRA_PLUGINS", ())  # (name, module) pairs registered without entry points
    # Log what an operator must know (no secret, plugin warnings) once, where the service runs:
    # commands that only read turn it off, and serve says it once for all its processes.
    announce = test_config.pop("ANNOUNCE", True)
    if settings is None:
        settings = load_settings(test_config) if test_config else process_settings()
    app = Flask(__name__)
    # /webhook//<secret> would be answered with a 308 to /webhook/<secret>: a redirect that
    # repeats the secret, which Dolibarr does not even follow. A 404 in JSON instead.
    app.url_map.merge_slashes = False
    # Our code reads the settings from the service (``Settings``); app.config gets a copy for
    # Flask (its own keys, which a test may set) and for code that only has the app.
    app.config.update(settings.values)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_BODY_SIZE"]
    app.json.sort_keys = False
    access_log.init_app(app, settings)

    plugins = build_plugins(settings, extra=extra_plugins)
    store = Store.for_service(settings)
    try:
        svc = Service(settings=settings, plugins=plugins, store=store, metrics=Metrics())
        app.extensions[EXTENSION] = svc

        errors.init_app(app)
        views.init_app(app)
        health.init_app(app)
        ratelimit.init_app(app)
        admin.init_app(app)
    except BaseException:
        # Start-up failed after the store was made (a ConfigError, a store out of reach): the
        # store's connections are closed now, not left to the garbage collector (Python 3.13
        # warns of an SQLite one). A failed migration's were closed by Store.for_service.
        store.dispose()
        raise
    if not settings["RATELIMIT"]:  # Flask-Limiter counts in Flask's hooks: with a limit, every request is Flask's
        app.wsgi_app = DirectWebhook(app.wsgi_app, svc, app.config)
    if announce:
        _announce(app, svc)
    return app


def _announce(app: Flask, svc: Service) -> None:
    if not any(source.secrets for source in svc.sources.values()):
        if svc.settings["INSECURE_NO_AUTH"]:
            logger.warning("INSECURE: DOLIBARR_WEBHOOKS_INSECURE_NO_AUTH is on: events are accepted from anyone. "
                           "For local trials only.")
        else:
            logger.error("no secret configured (DOLIBARR_WEBHOOKS_SECRET): every event will be refused with 401. "
                         "Run 'dolibarr-webhooks serve' once to generate one, or set it in .env.")
    for name, info in svc.plugins.info.items():
        if info.status == "disabled":
            logger.info("plugin %s is disabled: %s", name, info.reason)
        for warning in info.warnings:
            logger.warning("plugin %s: %s", name, warning)
