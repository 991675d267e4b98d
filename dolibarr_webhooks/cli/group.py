"""The ``webhooks`` command group, and what its commands share: the service of the app they
run in, the ``--json`` option and how a listing is printed."""

from __future__ import annotations

import contextlib
import functools
import json
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import click
from flask import current_app
from flask.cli import AppGroup

from ..labels import encodable
from ..pipeline.ingest import Service
from ..store import STORE_ERRORS, unavailable
from ..listing import since_time  # noqa: F401 (the commands' --since)


class _Webhooks(AppGroup):
    """Each command run in the app's context closes the app's store when it ends, however the
    app was made (``dolibarr-webhooks``'s own, Flask's ``--app`` discovery, a test's runner):
    its connections and files are not left to the interpreter's exit. A store it cannot use
    is one line (``said_in_one_line``)."""

    def command(self, *args: Any, **kwargs: Any):
        if not kwargs.get("with_appcontext", True):
            return super().command(*args, **kwargs)

        def decorator(f):
            @functools.wraps(f)
            def closing_the_store(*f_args: Any, **f_kwargs: Any) -> Any:
                store = service().store
                click.get_current_context().call_on_close(store.dispose)
                with said_in_one_line(store.url):
                    return f(*f_args, **f_kwargs)
            return super(_Webhooks, self).command(*args, **kwargs)(closing_the_store)
        return decorator


@contextlib.contextmanager
def said_in_one_line(database_url: str) -> Iterator[None]:
    """A store that is down, full or out of reach stops the command with one line naming it,
    not a traceback."""
    try:
        yield
    except STORE_ERRORS as exc:
        raise click.ClickException(unavailable(database_url, exc)) from None


webhooks = _Webhooks("webhooks", help="Receive, inspect and replay Dolibarr webhooks.")

# Every command a script may read has this one option (STYLE.md 9), printed by ``emit``.
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def service() -> Service:
    return current_app.extensions["dolibarr_webhooks"]


def emit(data: Any, as_json: bool, text: str | Iterable[str]) -> None:
    """``data`` as indented JSON with ``--json``, else ``text`` (a string or its lines)."""
    if as_json:  # a forged lone surrogate kept in a payload printed as the escape it came as
        click.echo(encodable(json.dumps(data, indent=2, default=str, ensure_ascii=False)))
    else:
        click.echo(text if isinstance(text, str) else "\n".join(text))


def table(rows: list[list[str]], headers: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]


def shortened(text: str | None, width: int) -> str:
    """``text`` in at most ``width`` characters, a cut marked with "..." (``show`` has it whole)."""
    text = text or ""
    return text if len(text) <= width else text[:width - 3] + "..."


def when(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
