"""gunicorn glue: an access logger that never writes a secret, and the runner behind ``serve``."""

from __future__ import annotations

from gunicorn.glogging import Logger

from .logs import redact


class RedactingLogger(Logger):
    """gunicorn's access log with the secret removed from the path and the query string."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q"):
            if key in atoms and isinstance(atoms[key], str):
                atoms[key] = redact(atoms[key]) if key != "q" else redact("?" + atoms[key])[1:]
        # Headers may carry Authorization or signatures: never let a format print them.
        for key in list(atoms):
            if key.startswith("{authorization}") or key.startswith("{x-dolibarr-signature}"):
                atoms[key] = "***"
        return atoms


def run(bind: str, workers: int = 2) -> None:
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("timeout", 60)
            self.cfg.set("graceful_timeout", 25)
            self.cfg.set("logger_class", RedactingLogger)

        def load(self):
            from . import create_app

            return create_app()

    Application().run()
