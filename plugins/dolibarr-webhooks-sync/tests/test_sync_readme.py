"""The README's snippets are real: its configurations load through the core's settings, its
body example has the keys actually sent, its receiver snippet verifies what we send."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

import dolibarr_webhooks_sync as sync
from dolibarr_webhooks.pluginkit import sign
from dolibarr_webhooks.settings import load_settings, plugin_config
from dolibarr_webhooks.testing import rst_code_blocks

README = Path(__file__).parents[1] / "README.rst"


def code_blocks(language: str) -> list[str]:
    """The ``.. code-block:: <language>`` blocks of the README, dedented, in order."""
    return rst_code_blocks(README.read_text(encoding="utf-8"), language)


def settings_from(tmp_path, environ=None, env_text=None):
    env_file = tmp_path / ".env"
    env_file.write_text(env_text or "", encoding="utf-8")
    settings = load_settings(environ=environ or {}, env_file=env_file)
    return sync.parse_settings(plugin_config(settings, "sync"))


def test_invoice_paid_env_config(tmp_path):
    env = next(block for block in code_blocks("sh") if "SYNC_EVENTS=BILL_PAYED" in block)
    settings = settings_from(tmp_path, env_text=env)
    (endpoint,) = settings.endpoints
    assert endpoint.url == "https://accounting.example/hooks/dolibarr"
    assert endpoint.events == ("BILL_PAYED",)
    assert endpoint.enrich and settings.api_url == "https://erp.example/api/index.php"


def test_synchronisation_toml_config(tmp_path):
    (toml,) = code_blocks("toml")
    path = tmp_path / "dolibarr-webhooks.toml"
    path.write_text(toml, encoding="utf-8")
    settings = settings_from(tmp_path, environ={"DOLIBARR_WEBHOOKS_CONFIG": str(path)})
    assert [(e.name, e.enrich) for e in settings.endpoints] == [("crm", True), ("shop", True), ("archive", False)]
    assert settings.endpoints[0].headers == (("X-Tenant", "acme"),)
    assert settings.endpoints[2].key == b"a raw secret string"
    assert (settings.enrich_delay, settings.enrich_attempts) == (2, 3)
    config = plugin_config(load_settings(environ={"DOLIBARR_WEBHOOKS_CONFIG": str(path)}, env_file=tmp_path / ".env"),
                           "sync")
    assert sync.handled_events(settings=sync.read_settings(config=config)) is None


def test_documented_body_has_the_keys_sent(make_event):
    (example,) = code_blocks("json")
    documented = json.loads(example)
    sent = json.loads(sync.message_body(make_event("BILL_PAYED"), {}, False))
    assert documented.keys() == sent.keys()
    assert documented["data"].keys() == sent["data"].keys()


def test_receiver_snippet_verifies_and_dedupes(make_event):
    pytest.importorskip("flask")
    (snippet,) = [block for block in code_blocks("python") if "standardwebhooks" in block]
    paid = []
    namespace = {"__name__": "__main__", "mark_paid": lambda ref, obj: paid.append(ref)}
    exec(compile(snippet, str(README), "exec"), namespace)
    client = namespace["app"].test_client()

    secret = re.search(r'Webhook\("(whsec_[^"]+)"\)', snippet).group(1)
    endpoint = sync.Endpoint(name="accounting", url="http://unused.example/", key=sync.secret_key(secret, "s"),
                             events=None)
    event = make_event("BILL_PAYED")
    body = sync.message_body(event, event.object, False)
    msg_id = sync.message_id(event, endpoint)
    timestamp = int(time.time())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(endpoint.key, msg_id, timestamp, body),
               "Content-Type": "application/json"}
    for _ in range(2):  # a retry of the same delivery
        assert client.post("/hooks/dolibarr", data=body, headers=headers).status_code == 204
    assert paid == ["FA2611-0042"]
    forged = dict(headers, **{"webhook-signature": sign(b"another key", msg_id, timestamp, body)})
    assert client.post("/hooks/dolibarr", data=body, headers=forged).status_code == 401
