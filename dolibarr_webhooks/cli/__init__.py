"""The command line: ``flask --app dolibarr_webhooks webhooks ...``, and the
``dolibarr-webhooks`` console script, which is the same commands bound to the app.

``group`` (the ``webhooks`` group and what its commands share), ``inspect`` (commands that
read), ``ops`` (commands that act), ``serve``, ``check``, ``targets`` (the URL to give
Dolibarr).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from typing import Any, Iterator, Mapping

import click
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo

from ..settings import ConfigError, env_name, process_settings
from ..store import STORE_ERRORS
from ..version import __version__
from . import check, inspect, ops, serve  # noqa: F401  (each registers its commands on the group)
from .group import said_in_one_line, webhooks


def init_app(app: Flask) -> None:
    app.cli.add_command(webhooks)


@contextlib.contextmanager
def as_a_command_says_it(test_config: Mapping[str, Any] | None) -> Iterator[None]:
    """Flask's own command line (``flask --app dolibarr_webhooks webhooks stats``, ``flask
    run``) builds the app through the package's factory and prints what it raises with its
    traceback. There, a bad setting or a store out of reach is the line ``dolibarr-webhooks``
    prints, with its exit status; anywhere else (gunicorn, a test) the exception goes on."""
    context = click.get_current_context(silent=True)
    if context is None or context.find_object(ScriptInfo) is None:
        yield
        return
    try:
        yield
    except STORE_ERRORS:
        # Its URL read now: the settings were read (the store was reached for) before.
        with said_in_one_line((test_config or {}).get("DATABASE_URL") or process_settings()["DATABASE_URL"]):
            raise
    except ConfigError as exc:
        said = click.ClickException(str(exc))
        said.exit_code = 2  # as main() exits on one
        raise said from None


# Commands that run the service create and migrate the store and announce the configuration
# (a missing secret, plugin warnings) in the log. Those that need no store (and --help) leave no
# file behind in the folder they run in; every other command works on a store already there.
SERVICE_COMMANDS = ("worker", "migrate")
STORELESS_COMMANDS = ("events", "plugins", "send")


def _create_cli_app() -> Flask:
    """The app for one command, built when the command first needs it."""
    from ..store import sqlite_path
    from ..web.app import create_app

    ctx = click.get_current_context(silent=True)
    command = ctx.info_name if ctx else None
    settings = process_settings()  # read once for the command and its app
    with said_in_one_line(settings["DATABASE_URL"]):
        if command in SERVICE_COMMANDS:
            return create_app({"ANNOUNCE": command == "worker"}, settings=settings)
        database = sqlite_path(settings["DATABASE_URL"])
        missing = database is not None and not os.path.exists(database)
        if command in STORELESS_COMMANDS:
            # events, plugins, send: nothing to store, so no file to create, and no database
            # to reach (they work while it is down).
            return create_app({"ANNOUNCE": False}, settings=settings.replace(AUTO_MIGRATE=False))
        if missing:
            raise click.ClickException(f"no store at {database} yet: 'dolibarr-webhooks serve' (or 'migrate') "
                                       f"creates it; run this command where the service runs, or set "
                                       f"DOLIBARR_WEBHOOKS_DATABASE_URL")
        return create_app({"ANNOUNCE": False}, settings=settings)  # its store is closed when the command ends


def _use_env_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        os.environ[env_name("ENV_FILE")] = value  # read by every reading of the settings (env_file_path)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"dolibarr-webhooks {__version__}\nPython {platform.python_version()}\n"
               f"Flask {importlib.metadata.version('flask')}")
    ctx.exit()


# The product's own options, in place of Flask's: its --app and --debug choose another
# application and a debugger, and its --env-file loads a file into the environment with
# python-dotenv, beside the one the settings read; its --version names Flask's version only.
_OPTIONS = (
    click.Option(["-e", "--env-file"], type=click.Path(dir_okay=False), expose_value=False, is_eager=True,
                 allow_from_autoenv=False, callback=_use_env_file,
                 help="Read the settings' .env from this file instead of ./.env (as DOLIBARR_WEBHOOKS_ENV_FILE)."),
    click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True, allow_from_autoenv=False,
                 callback=_print_version, help="Show the version and exit."),
)


class _Commands(FlaskGroup):
    """Only the ``webhooks`` commands, listed without building the app: Flask's group would
    load it (and create the store) to list the app's other command groups, itself included."""

    def __init__(self, **extra) -> None:
        super().__init__(add_default_commands=False, add_version_option=False, load_dotenv=False,
                         set_debug_flag=False, **extra)
        self.params = list(_OPTIONS)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return click.Group.list_commands(self, ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return click.Group.get_command(self, ctx, name)


def main() -> None:
    """``dolibarr-webhooks``: the ``webhooks`` commands, bound to the app."""
    # No python-dotenv loading: the settings read .env themselves and know which value came from it.
    group = _Commands(create_app=_create_cli_app,
                      help="Receive, inspect and replay Dolibarr webhooks (see 'flask --app dolibarr_webhooks').")
    for name, command in webhooks.commands.items():
        group.add_command(command, name)
    try:
        group.main(prog_name="dolibarr-webhooks")
    except ConfigError as exc:  # a bad setting or plugin: one plain line, not a traceback
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
