"""The web dashboard at ``/admin/``: events, deliveries, failures, quarantine, plugins and an
overview, in English and French, behind a login. Off (404) unless
``DOLIBARR_WEBHOOKS_ADMIN_PASSWORD`` is set.

It reads through ``store.dashboard`` and the ``Store`` methods the CLI uses, and replays and
reprocesses through the same ``Store.replay`` and ``Service.reprocess`` as
``dolibarr-webhooks replay`` and ``reprocess``.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    if not app.extensions["dolibarr_webhooks"].settings["ADMIN_PASSWORD"]:
        return
    from werkzeug.middleware.proxy_fix import ProxyFix

    from . import auth, views  # noqa: F401  (their routes join the blueprint)
    from .blueprint import bp

    hops = app.extensions["dolibarr_webhooks"].settings["TRUSTED_PROXIES"]
    if hops:
        # Behind the proxies the settings trust: their scheme (the cookie is Secure over
        # HTTPS) and their sub-path (X-Forwarded-Prefix: links and the cookie's path follow).
        # Not the client address: the receiver reads X-Forwarded-For itself.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=hops, x_host=hops, x_prefix=hops)
    app.secret_key = auth.secret_key(app)
    app.session_interface = auth.Sessions()
    auth.init_limiter(app)
    app.register_blueprint(bp)
