"""The plugin's Jinja2 templates: the user's folder over the packaged ones, compiled at start-up
and kept, so a delivery only renders."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from jinja2 import (ChoiceLoader, Environment, FileSystemLoader, PackageLoader, Template, TemplateNotFound,
                    TemplateSyntaxError, pass_context, select_autoescape)

from dolibarr_webhooks import ConfigError
from dolibarr_webhooks.pluginkit import format_amount, not_utf8, to_decimal

DATE_FORMATS = {"en": "%Y-%m-%d", "fr": "%d/%m/%Y"}


@pass_context
def _money(ctx: Any, value: Any, code: str | None = None) -> str:
    """``{{ object.total_ht | money }}``: the amount in the rule's language and the object's currency."""
    return format_amount(value, code or ctx.get("currency"), ctx.get("language", "en")) or ""


@pass_context
def _date(ctx: Any, value: Any) -> str:
    """``{{ object.date_lim_reglement | date }}``: Dolibarr's Unix timestamps as a day."""
    seconds = to_decimal(value)
    if seconds is None or seconds <= 0:
        return ""
    day = datetime.fromtimestamp(int(seconds), tz=timezone.utc)
    return day.strftime(DATE_FORMATS.get(ctx.get("language"), DATE_FORMATS["en"]))


class Templates:
    """One folder's templates (or only the packaged ones), HTML autoescaped.

    Templates are read once, like every other setting: ``auto_reload`` is off, and which
    template answers a lookup is remembered, so a delivery neither stats files nor compiles.
    An edited template takes effect at the next start, after the start-up check.
    """

    def __init__(self, folder: str | None = None) -> None:
        self.folder = folder
        loaders: list[Any] = [FileSystemLoader(folder)] if folder else []
        loaders.append(PackageLoader("dolibarr_webhooks_email", "templates"))
        self.env = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=-1,  # never evict: the set of templates is fixed at start-up
        )
        self.env.filters["money"] = _money
        self.env.filters["date"] = _date
        # Lookups and strings already resolved; plain dicts: a race only compiles twice.
        self._first: dict[tuple[str, ...], Template] = {}
        self._beside: dict[str, Template | None] = {}
        self._strings: dict[str, Template] = {}

    def check_folder(self, setting: str) -> None:
        """Compile every template of the user's folder, so a typo stops start-up naming the file."""
        if not self.folder:
            return
        root = Path(self.folder)
        for path in sorted(root.rglob("*")):
            if path.suffix in (".txt", ".html") and path.is_file():
                name = path.relative_to(root).as_posix()
                try:
                    self.env.get_template(name)
                except TemplateSyntaxError as exc:
                    raise ConfigError(setting, f"{name} line {exc.lineno}: {exc.message}") from exc
                except UnicodeDecodeError as exc:  # Jinja reads templates as UTF-8
                    raise ConfigError(setting, f"{name}: {not_utf8(exc)}; save it as UTF-8") from None

    def string(self, source: str) -> Template:
        """A template given as a setting (a rule's subject), compiled once."""
        template = self._strings.get(source)
        if template is None:
            template = self._strings[source] = self.env.from_string(source)
        return template

    def first(self, names: Iterable[str]) -> Template:
        """The first of ``names`` that exists (``TemplateNotFound`` if none does)."""
        key = tuple(names)
        template = self._first.get(key)
        if template is None:
            template = self._first[key] = self.env.select_template(key)
        return template

    def html_beside(self, text: Template) -> Template | None:
        """The ``.body.html`` from the same folder as a ``.body.txt``: a user's text-only override
        must not be sent with the packaged HTML of the same name."""
        name = str(text.name)
        if name in self._beside:
            return self._beside[name]
        try:
            html: Template | None = self.env.get_template(name[: -len("txt")] + "html")
        except TemplateNotFound:
            html = None
        if html is not None and text.filename and html.filename != text.filename[: -len("txt")] + "html":
            html = None
        self._beside[name] = html
        return html
