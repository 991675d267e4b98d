"""The web: the only part that imports Flask. ``app`` (the factory), ``views`` (the webhook
endpoints), ``request`` (what one request carries, read once), ``health``, ``errors``,
``ratelimit``, ``access_log``, ``gunicorn`` (worker classes, logger and the ``serve`` runner)."""
