"""Meta-tests: every hook has a documentation heading and tests; README commands stay true."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from dolibarr_webhooks import hookspecs

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "plugins.rst").read_text()
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
         if hasattr(fn, "dolibarr_webhooks_spec")]


def test_hooks_are_found():
    assert set(HOOKS) == {"register_events", "handled_events", "handle_event"}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_its_signature(hook):
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = f"{hook}({params})"
    assert re.search(rf"^{re.escape(heading)}\n~+\n", GUIDE, re.M), f"docs/plugins.rst lacks a heading {heading}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_in_a_test(hook):
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_docs.py")
    assert re.search(rf"def {hook}\(", tests), f"no test implements the {hook} hook"


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.rst").read_text()
    blocks = re.findall(r"\.\. code-block:: sh\n\n((?:    .+\n)+)", readme)
    assert "dolibarr-webhooks serve" in blocks[0] and "pip install" in blocks[0]
    assert "pytest" in blocks[1] and "pip install" in blocks[1]
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = [line.strip() for line in blocks[1].splitlines() if "pytest" in line][0]
    assert test_command in ci, ".ci/run must run the README's test command"
