"""Would pydantic (or pydantic-settings) pay for itself in the plugins' settings? Issue #12.

Measured side by side, for the Slack plugin's settings: the start-up cost (importing the
library, building the model classes, validating a configuration) and the per-delivery cost
(reading the settings object in ``handle_event``), hand-written dataclasses against an
equivalent pydantic model. Prints figures and ratios; needs ``pip install pydantic
pydantic-settings`` (neither is a dependency of the project).

    python bench/plugin_settings.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
import timeit
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins" / "dolibarr-webhooks-slack"))

# The same rules as dolibarr_webhooks_slack.parse_config, as pydantic would hold them. What
# pydantic cannot say by itself still needs a validator: events given as "A, B" in .env,
# upper-cased codes, http(s) URLs with a host, rules inheriting language and timeout, and
# errors that name DOLIBARR_WEBHOOKS_SLACK_* or [plugins.slack] rules[i] without echoing a URL.
MODEL = textwrap.dedent('''
    from typing import Literal, Optional
    from urllib.parse import urlsplit
    from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

    def _url(value):
        parts = urlsplit(value.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an https URL")
        return value.strip()

    def _events(value):
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if value is not None and not value:
            raise ValueError("is empty")
        return value if value is None else tuple(v.strip().upper() for v in value)

    class Rule(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        webhook_url: str = Field(repr=False)
        events: Optional[tuple[str, ...]] = None
        language: Literal["en", "fr"] = "en"
        timeout: float = Field(10.0, gt=0, le=300, strict=False)
        _check_url = field_validator("webhook_url")(classmethod(lambda cls, v: _url(v)))
        _check_events = field_validator("events", mode="before")(classmethod(lambda cls, v: _events(v)))

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        webhook_url: Optional[str] = None
        alert_webhook_url: Optional[str] = None
        events: Optional[tuple[str, ...]] = None
        language: Literal["en", "fr"] = "en"
        timeout: float = Field(10.0, gt=0, le=300)
        rules: tuple[Rule, ...] = ()
        _check_events = field_validator("events", mode="before")(classmethod(lambda cls, v: _events(v)))

        @model_validator(mode="before")
        @classmethod
        def inherit(cls, data):
            data = dict(data)
            for key in ("language", "timeout"):
                if key in data:
                    data["rules"] = [{key: data[key], **r} for r in data.get("rules") or []]
            return data
''')

CONFIG = {
    "webhook_url": "https://hooks.slack.com/services/T0/B0/X", "events": "PROPAL_CLOSE_SIGNED, BILL_*",
    "language": "fr", "timeout": "4.5", "alert_webhook_url": "https://hooks.slack.com/services/T0/B9/X",
    "rules": [{"events": ["PROPAL_CLOSE_SIGNED"], "webhook_url": "https://hooks.slack.com/services/T0/B1/X"},
              {"events": ["BILL_PAYED", "PAYMENT_*"], "webhook_url": "https://hooks.slack.com/services/T0/B2/X",
               "language": "en"}],
}


def fresh_process(code: str, rounds: int = 11) -> float:
    """Median wall time of a new interpreter running ``code``, in ms."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "plugins" / "dolibarr-webhooks-slack")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def per_call(stmt, number: int) -> float:
    """Best of 5 of the mean time of ``stmt()``, in µs."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> None:
    import dolibarr_webhooks_slack as slack

    print("start-up: a new interpreter, median of 11 (ms)")
    base = fresh_process("import dolibarr_webhooks_slack")
    with_pydantic = fresh_process("import pydantic, dolibarr_webhooks_slack")
    with_settings = fresh_process("import pydantic_settings, dolibarr_webhooks_slack")
    with_models = fresh_process(f"import dolibarr_webhooks_slack\nexec({MODEL!r})")
    print(f"  import the plugin (dataclasses)         {base:7.1f}")
    print(f"  + import pydantic                       {with_pydantic:7.1f}  (+{with_pydantic - base:.1f}, "
          f"x{with_pydantic / base:.2f})")
    print(f"  + import pydantic_settings              {with_settings:7.1f}  (+{with_settings - base:.1f}, "
          f"x{with_settings / base:.2f})")
    print(f"  + pydantic and the two model classes    {with_models:7.1f}  (+{with_models - base:.1f}, "
          f"x{with_models / base:.2f})")

    module = sys.modules["slack_settings_model"] = types.ModuleType("slack_settings_model")
    exec(MODEL, module.__dict__)  # a module of its own: pydantic resolves annotations there
    Settings = module.Settings
    print("reading one configuration, once per process (µs)")
    ours = per_call(lambda: slack.parse_config(CONFIG), 2000)
    theirs = per_call(lambda: Settings.model_validate(CONFIG), 2000)
    print(f"  parse_config (dataclasses, 2 clients)   {ours:7.1f}")
    print(f"  Settings.model_validate (no clients)    {theirs:7.1f}  (x{theirs / ours:.2f})")

    print("per delivery: choosing the rules of an event from the settings object (µs)")
    dataclass_settings, model_settings = slack.parse_config(CONFIG), Settings.model_validate(CONFIG)
    rules_of = {"dataclasses": lambda: [r for r in dataclass_settings.rules if slack.matches("BILL_PAYED", r.events)],
                "pydantic": lambda: [r for r in model_settings.rules if slack.matches("BILL_PAYED", r.events)]}
    figures = {name: per_call(stmt, 20000) for name, stmt in rules_of.items()}
    print(f"  dataclasses                             {figures['dataclasses']:7.2f}")
    print(f"  pydantic                                {figures['pydantic']:7.2f}  "
          f"(x{figures['pydantic'] / figures['dataclasses']:.2f})")


if __name__ == "__main__":
    main()
