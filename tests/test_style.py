"""The house style of setup.cfg's [flake8] section holds for every Python file of the
repository: the core, the plugins, the tests, the benchmarks and contrib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_flake8_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "flake8", "dolibarr_webhooks", "plugins", "tests", "bench",
                             "contrib"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr
