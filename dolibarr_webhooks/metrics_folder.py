"""``PROMETHEUS_MULTIPROC_DIR``: the folder where every process of the service (gunicorn's and
the ``worker`` command) writes its metric samples, so that ``/metrics`` adds them up. No
prometheus_client here: it chooses where values live when it is imported, and gunicorn's
master sets the folder before (``web.gunicorn.prepare_multiproc_dir``)."""

from __future__ import annotations

import os

from .exceptions import ConfigError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def made(path: str) -> str:
    """``path``, made when missing: a ``ConfigError`` naming the variable when it cannot be
    made or written, where it was a traceback from ``serve``, ``worker`` and gunicorn."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(MULTIPROC_ENV, f"cannot make the folder {path} ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(MULTIPROC_ENV, f"the folder {path} is not writable by this user")
    return path
