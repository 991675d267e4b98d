"""What ``check`` finds, as data: the findings and their levels, and the words for a plugin's
state. The ``check`` command and the dashboard's plugins page report through the same code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .settings import Settings, env_name

OK, INFO, WARNING, ERROR = "ok", "info", "warning", "error"
LEVELS = (OK, INFO, WARNING, ERROR)


@dataclass
class Finding:
    level: str
    topic: str
    message: str
    setting: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    plugins: list[dict[str, Any]] = field(default_factory=list)

    def add(self, level: str, topic: str, message: str, setting: str | None = None) -> None:
        self.findings.append(Finding(level, topic, message, setting))

    def count(self, level: str) -> int:
        return sum(1 for f in self.findings if f.level == level)

    @property
    def ok(self) -> bool:
        return self.count(ERROR) == 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.count(ERROR), "warnings": self.count(WARNING),
                "findings": [f.to_dict() for f in self.findings], "targets": self.targets, "plugins": self.plugins}


def describe_plugin(report: Report, info) -> None:
    report.plugins.append(info.to_dict())
    what = "built-in plugin" if info.builtin else "plugin"
    version = f" {info.version}" if info.version and not info.builtin else ""
    if info.status == "enabled":
        events = "every event" if info.events is None else (", ".join(info.events) or "no event")
        handles = f"handles {events}" if "handle_event" in info.hooks else "handles no event"
        report.add(OK, "plugins", f"{what} {info.name}{version} is loaded and configured: {handles}")
    else:
        # A plugin installed and not used warns at every check: say how to leave it out.
        leave_out = "" if info.builtin else f" (not used? {env_name('BLOCK_PLUGINS')}={info.name} leaves it out)"
        report.add(INFO if info.builtin else WARNING, "plugins",
                   f"{what} {info.name}{version} is installed but disabled: {info.reason}{leave_out}")
    for warning in info.warnings:
        report.add(WARNING, "plugins", f"{what} {info.name}: {warning}")


def mask_report(report: Report, settings: Settings) -> None:
    """A plugin's or a driver's message may quote a credential: the same masking as the logs.
    The target URLs are left whole: they are printed to be pasted into Dolibarr."""
    from .logs import SecretScrubber

    scrubber = SecretScrubber()
    scrubber.add(settings.sensitive_values)
    for finding in report.findings:
        finding.message = scrubber.mask(finding.message)
    for plugin in report.plugins:
        plugin["reason"] = scrubber.mask(plugin["reason"] or "")
