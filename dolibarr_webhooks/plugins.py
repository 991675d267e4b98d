"""The plugin manager: built per app, never at import time.

Loading follows pluggy's eggsample: add the specs, block what operators block,
load entry points, register the built-in plugins after them, check for unknown
hooks. Dispatch then calls one plugin's implementation at a time, so one
plugin's exception never stops another's.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .events import Catalogue, EventType, canonical_code, matches
from .settings import Settings, plugin_config
from .exceptions import ConfigError, PluginDisabled

ENTRY_POINT_GROUP = "dolibarr_webhooks.handlers"

# Built-in behaviour, as plugins of the same hooks: name -> module.
DEFAULT_PLUGINS = {
    "catalogue": "dolibarr_webhooks.default_plugins.catalogue",
    "log": "dolibarr_webhooks.default_plugins.log",
}

logger = logging.getLogger(__name__)


class PluginLoadError(ConfigError):
    """A plugin could not be imported or registered."""


@dataclass
class PluginInfo:
    name: str
    version: str | None
    hooks: list[str]
    events: list[str] | None  # None: every event
    status: str = "enabled"  # enabled | disabled
    reason: str = ""
    builtin: bool = False
    warnings: list[str] = field(default_factory=list)  # what handled_events warned about its settings

    @property
    def handles_events(self) -> bool:
        return "handle_event" in self.hooks and self.status == "enabled"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hooks": self.hooks, "events": self.events,
                "status": self.status, "reason": self.reason, "builtin": self.builtin, "warnings": self.warnings}


@dataclass
class Plugins:
    """A typed facade over the plugin manager: what is loaded, who handles what, and each
    plugin's settings, read once at start-up."""

    pm: pluggy.PluginManager
    settings: Settings
    catalogue: Catalogue
    info: dict[str, PluginInfo] = field(default_factory=dict)
    plugin_settings: dict[str, Any] = field(default_factory=dict)  # name -> what read_settings returned
    _callers: dict[tuple[str, str], Any] = field(default_factory=dict)

    def handlers(self) -> list[str]:
        return [name for name, info in self.info.items() if info.handles_events]

    def handlers_for(self, code: str) -> list[str]:
        """Names of the enabled plugins that handle ``code``, in a stable order."""
        return [name for name in self.handlers() if matches(code, self.info[name].events)]

    def implementing(self, hook: str) -> list[str]:
        """Names of the enabled plugins that implement ``hook``."""
        return [name for name, info in self.info.items() if hook in info.hooks and info.status == "enabled"]

    def call(self, hook: str, plugin: str, **kwargs: Any) -> list[Any]:
        """Call one hook of one plugin only, with keyword arguments."""
        key = (hook, plugin)
        caller = self._callers.get(key)
        if caller is None:
            others = [p for name, p in self.pm.list_name_plugin() if name != plugin and p is not None]
            caller = self._callers[key] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        return caller(**kwargs)

    def call_with_settings(self, hook: str, plugin: str, **kwargs: Any) -> list[Any]:
        """Call one plugin's hook with the settings it read at start-up."""
        return self.call(hook, plugin, settings=self.plugin_settings.get(plugin), **kwargs)

    def handle(self, plugin: str, event: Any) -> None:
        """Run one plugin's ``handle_event`` for one event; its exceptions are the caller's to record."""
        self.call_with_settings("handle_event", plugin, event=event)

    def event_codes(self) -> list[str]:
        """Every code known to the catalogue or named exactly by a handler."""
        codes = {t.code for t in self.catalogue}
        for info in self.info.values():
            for pattern in info.events or ():
                if not any(ch in pattern for ch in "*?["):
                    codes.add(canonical_code(pattern))
        return sorted(codes)


def _entry_points(names: Iterable[str] | None) -> list[metadata.EntryPoint]:
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    wanted = set(names or ())
    if wanted:
        missing = wanted - {ep.name for ep in eps} - set(DEFAULT_PLUGINS)
        if missing:
            raise PluginLoadError(
                "DOLIBARR_WEBHOOKS_PLUGINS",
                f"no installed plugin named {', '.join(sorted(missing))} "
                f"(installed: {', '.join(sorted(ep.name for ep in eps)) or 'none'})",
            )
    return eps


def build_plugins(settings: Settings, extra: Iterable[tuple[str, Any]] = ()) -> Plugins:
    """Build the plugin manager for one app. ``extra`` registers (name, module) pairs, for tests."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    chosen = settings["PLUGINS"]
    for name in settings["BLOCK_PLUGINS"]:
        pm.set_blocked(name)
    versions: dict[str, str | None] = {}
    for ep in _entry_points(chosen):
        if (chosen and ep.name not in chosen) or pm.is_blocked(ep.name):
            continue
        if pm.get_plugin(ep.name) is not None:
            raise PluginLoadError(ep.name, f"two installed plugins are named {ep.name}")
        try:
            plugin = ep.load()
        except Exception as exc:  # any import error must name the plugin at start-up
            dist = ep.dist.name if ep.dist else "?"
            raise PluginLoadError(
                f"plugin {ep.name}", f"cannot be loaded from {ep.value} ({dist}): {type(exc).__name__}: {exc}"
            ) from exc
        pm.register(plugin, name=ep.name)
        versions[ep.name] = ep.dist.version if ep.dist else None
    for name, module in extra:
        if not pm.is_blocked(name):
            pm.register(module, name=name)
            versions[name] = getattr(module, "__version__", None)
    from .version import __version__

    for name, module_name in DEFAULT_PLUGINS.items():
        if pm.is_blocked(name) or (chosen and name not in chosen and name != "catalogue"):
            continue
        pm.register(import_module(module_name), name=name)
        versions[name] = __version__
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"plugin {exc.plugin_name if hasattr(exc, 'plugin_name') else '?'}", str(exc)) from None
    if settings["TRACE_HOOKS"]:
        pm.trace.root.setwriter(lambda text: logger.debug("hook: %s", text.rstrip()))  # pluggy indents calls
        pm.enable_tracing()

    plugins = Plugins(pm=pm, settings=settings, catalogue=Catalogue())
    _collect_events(plugins)
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # pluggy lists blocked names with no plugin
            continue
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
        info = PluginInfo(name=name, version=versions.get(name), hooks=hooks, events=None,
                          builtin=name in DEFAULT_PLUGINS)
        try:
            # A plugin warns (warnings.warn) about settings that work but should change; kept
            # here, the warnings are logged once at start and counted by check, not printed
            # by every command that builds the plugins.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _read_settings(plugins, name, hooks, info)
            info.warnings = list(dict.fromkeys(str(w.message) for w in caught))
        except PluginDisabled as exc:
            info.status, info.reason = "disabled", str(exc)
        except ConfigError:
            raise
        except Exception as exc:
            raise PluginLoadError(f"plugin {name}",
                                  f"its settings could not be read: {type(exc).__name__}: {exc}") from exc
        plugins.info[name] = info
    return plugins


def _read_settings(plugins: Plugins, name: str, hooks: list[str], info: PluginInfo) -> None:
    """Once per process: the plugin's raw settings become its own checked object, which every
    later call of its hooks receives; then it says which events it handles."""
    settings: Any = plugin_config(plugins.settings, name)
    if "read_settings" in hooks:
        result = plugins.call("read_settings", name, config=settings)
        settings = result[0] if result else settings
    plugins.plugin_settings[name] = settings
    if "handled_events" in hooks:
        result = plugins.call("handled_events", name, settings=settings)
        if result:
            info.events = sorted({canonical_code(p) for p in result[0]})


def _collect_events(plugins: Plugins) -> None:
    # llm-style registration: the host owns ``register``, so it knows who registered what.
    for name, plugin in plugins.pm.list_name_plugin():
        if plugin is None:
            continue

        def register(code: str, element: str = "", label_en: str = "", label_fr: str = "",
                     offered: bool = False, aliases: Iterable[str] = (), module: str = "",
                     never_fired: bool = False, _name: str = name) -> None:
            code = canonical_code(code)
            plugins.catalogue.add(EventType(code=code, element=element, label_en=label_en or code,
                                            label_fr=label_fr or label_en or code, offered=offered,
                                            aliases=tuple(aliases), plugin=_name, module=module,
                                            never_fired=never_fired))
        try:
            plugins.call("register_events", name, register=register)
        except ValueError as exc:
            raise PluginLoadError(f"plugin {name}", str(exc)) from None
