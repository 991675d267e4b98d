"""contrib/prometheus: the alert rules are valid, fire when they should (promtool's own unit
tests), and name only metrics that the service really exports."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from dolibarr_webhooks_testplugin import body

from dolibarr_webhooks.testing import WEBHOOKS_TEST_SECRET, deliver_until_idle

RULES = Path(__file__).resolve().parents[1] / "contrib" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (Debian package prometheus; .ci/run installs it)")
        pytest.skip("promtool is not installed: apt-get install prometheus")
    return found


def test_rules_are_valid_and_their_unit_tests_pass():
    check = subprocess.run([promtool(), "check", "rules", "dolibarr-webhooks.rules.yml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    tested = subprocess.run([promtool(), "test", "rules", "dolibarr-webhooks.rules.test.yml"], cwd=RULES,
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_metric_the_rules_name_is_exported(make_app, tmp_path):
    app = make_app({"recorder": {"file": str(tmp_path / "r.jsonl")}})
    client = app.test_client()
    assert client.post(f"/webhook/{WEBHOOKS_TEST_SECRET}", data=body(object_id=1)).status_code == 200
    deliver_until_idle(app)
    exported = set(re.findall(r"^(dolibarr_webhooks_\w+?)(?:\{| )", client.get("/metrics").get_data(as_text=True),
                              re.M))
    named = set(re.findall(r"\b(dolibarr_webhooks_\w+)\b", (RULES / "dolibarr-webhooks.rules.yml").read_text()))
    assert named and named <= exported, named - exported
