"""Exceptions that plugins raise to steer the worker, and the start-up error."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing or wrong: start-up stops and names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class PluginDisabled(Exception):
    """Raised by ``read_settings`` (or ``handled_events``) when a plugin is not configured at all.

    The plugin is then listed as disabled, with this reason, and handles nothing.
    """


class PermanentFailure(Exception):
    """This delivery will never succeed (a 4xx that will not change): no retry, dead at once."""


class RetryLater(Exception):
    """Retry this delivery after ``after`` seconds (Slack's Retry-After) instead of the schedule."""

    def __init__(self, message: str = "retry requested", after: float = 0.0) -> None:
        super().__init__(message)
        self.after = max(0.0, float(after))
