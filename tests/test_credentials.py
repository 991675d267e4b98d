"""Dolibarr users' passwords and API keys never reach the store, the logs, ``show`` or a plugin.

The bodies are real: posted by Dolibarr 22.0.4 when an admin created a user, typed a new
password, edited the user, and created a member (tests/data/captured-22.0.4-more).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest
import requests

from dolibarr_webhooks.credentials import MARKER, Scrubber
from dolibarr_webhooks.pipeline.parse import ParseError, event_from_body, parse_body
from dolibarr_webhooks.store import payloads
from dolibarr_webhooks.testing import running_service

CAPTURED = Path(__file__).parent / "data" / "captured-22.0.4-more"
# What Dolibarr 22.0.4 put in clear text (or as its hash) on its user and member objects.
CREDENTIAL_FIELDS = ("pass", "pass_indatabase", "pass_indatabase_crypted", "api_key")


def captured(name: str) -> bytes:
    return (CAPTURED / f"{name}.json").read_bytes()


def captured_headers(name: str) -> dict[str, str]:
    """The request headers Dolibarr sent with a captured body, less those requests sets itself."""
    lines = (CAPTURED / f"{name}.headers.txt").read_text().splitlines()[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs if k.strip().lower() not in ("host", "content-length")}


def secrets_in(raw: bytes) -> set[str]:
    """Every credential value of a body, read without the product's rule."""
    found: set[str] = set()
    stack = [json.loads(raw)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.update(str(item[k]) for k in CREDENTIAL_FIELDS if item.get(k) not in (None, ""))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


WITH_CREDENTIALS = ["50_USER_CREATE", "51_USER_NEW_PASSWORD", "52_USER_MODIFY", "54_MEMBER_CREATE"]
ALL_SECRETS = set().union(*(secrets_in(captured(name)) for name in WITH_CREDENTIALS))


def test_the_captured_bodies_do_carry_credentials():
    # The bodies this file tests with hold what the issue reported: else every test here passes idly.
    assert len(ALL_SECRETS) >= 4
    assert any(s.startswith("$2y$") for s in ALL_SECRETS), "a bcrypt hash"
    assert all(s.encode() in captured(n) or s.replace("/", "\\/").encode() in captured(n)
               for n in WITH_CREDENTIALS for s in secrets_in(captured(n)))


@pytest.mark.parametrize("name", WITH_CREDENTIALS)
def test_credentials_are_masked_at_parse(name):
    raw = captured(name)
    event = event_from_body(raw)
    text = event.to_json()
    assert not [s for s in ALL_SECRETS if s in text]
    masked = [k for k in CREDENTIAL_FIELDS if event.object.get(k) == MARKER]
    assert masked, "a reader sees that a value was there"
    expected = {k for k in CREDENTIAL_FIELDS if json.loads(raw)["object"].get(k) not in (None, "")}
    assert set(masked) == expected, "empty values stay empty: nothing was there"


@pytest.mark.parametrize("key", [
    "pass", "pass_indatabase", "pass_indatabase_crypted", "pass_crypted", "pass_temp", "api_key",
    "webservices_key", "clicktodial_password", "password", "smtp_password", "oauth_token", "access_token",
    "client_secret", "privateKey", "PrivateKey", "options_apikey", "options_api-key", "mail_pwd", "passwd",
    "stripe_secret_key", "passphrase",
])
def test_names_that_hold_credentials(key):
    assert Scrubber().is_credential(key)


@pytest.mark.parametrize("key", [
    "import_key", "key", "ref", "label", "passage", "arrayofkeyval", "compass", "bypass_count", "keyword",
    "monkey_business", "socid", "fk_user", "iban", "bic", "login", "email",
])
def test_names_that_do_not(key):
    assert not Scrubber().is_credential(key)


def test_nested_copies_and_lists_are_masked_and_db_removed():
    obj = {"login": "jdoe", "pass": "pw", "oldcopy": {"pass": "old", "api_key": ""},
           "lines": [{"db": {"database_user": "x"}, "api_key": "k"}]}
    assert Scrubber().scrub(obj) == {"login": "jdoe", "pass": MARKER, "oldcopy": {"pass": MARKER, "api_key": ""},
                                     "lines": [{"api_key": MARKER}]}


def test_configured_keys_add_to_the_default():
    _, obj = parse_body(captured("52_USER_MODIFY"), scrub_keys=["email"])
    assert obj["email"] == MARKER and obj["pass"] == MARKER and obj["api_key"] == MARKER
    assert Scrubber.for_keys(("email",)).fingerprint != Scrubber.for_keys(()).fingerprint


def test_a_body_that_does_not_parse_is_masked_where_pairs_can_be_read():
    raw = captured("51_USER_NEW_PASSWORD")[:-40]  # cut: not JSON any more
    with pytest.raises(ParseError):
        parse_body(raw)
    kept = Scrubber().scrub_raw(raw)
    assert not [s for s in secrets_in(captured("51_USER_NEW_PASSWORD")) if s.encode() in kept]
    assert b'"login":"harn.1203023006"' in kept.replace(b" ", b"")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    records = tmp_path_factory.mktemp("recorder") / "recorder.jsonl"
    env = {"DOLIBARR_WEBHOOKS_RECORDER_FILE": str(records), "DOLIBARR_WEBHOOKS_RECORDER_FULL": "true",
           "DOLIBARR_WEBHOOKS_LOG_LEVEL": "DEBUG"}
    with running_service(env=env) as running:
        running.records = records
        yield running


@pytest.mark.slow
def test_posted_as_dolibarr_posts_them_no_credential_is_kept_anywhere(service):
    ids = []
    for name in WITH_CREDENTIALS:
        response = requests.post(service.webhook_url, data=captured(name), headers=captured_headers(name), timeout=30)
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    # And one that cannot be parsed: it is quarantined, masked too.
    cut = captured("52_USER_MODIFY")[:-40]
    response = requests.post(service.webhook_url, data=cut, headers=captured_headers("52_USER_MODIFY"), timeout=30)
    assert response.status_code == 202
    service.wait_delivered(len(ids), plugin="recorder")

    shown = [service.cli("show", event_id, "--json").stdout for event_id in ids + [response.json()["id"]]]
    handed = service.records.read_text()
    stored = b"".join(p.read_bytes() for p in service.workdir.glob("webhooks.sqlite3*"))
    # The files' bytes hold the payloads compressed (store/payloads.py): read them as the store does too.
    with contextlib.closing(sqlite3.connect(service.workdir / "webhooks.sqlite3")) as conn:
        rows = conn.execute("SELECT payload FROM events WHERE payload IS NOT NULL").fetchall()
    kept = [payloads.unpacked(value) for value, in rows]
    assert len(kept) == len(ids) and all('"harn.1203023006"' in text for text in kept[:3]), "read in clear"
    assert MARKER in shown[0] and MARKER in handed
    for secret in ALL_SECRETS:
        assert secret.encode() not in stored, f"{secret[:6]}... is in the store"
        assert not [text for text in kept if secret in text], f"{secret[:6]}... is in a stored payload"
        assert secret not in service.logs(), f"{secret[:6]}... is in the logs"
        assert not [s for s in shown if secret in s], f"{secret[:6]}... is shown"
        assert secret not in handed, f"{secret[:6]}... was handed to a plugin"
    labels = {json.loads(s)["trigger_code"]: json.loads(s)["label"] for s in shown[:-1]}
    assert labels == {"USER_CREATE": "harn.1203023006", "USER_NEW_PASSWORD": "harn.1203023006",
                      "USER_MODIFY": "harn.1203023006", "MEMBER_CREATE": "Anaïs Lefèvre"}
    assert "User harn.1203023006 given a new password" in service.logs()


def test_made_up_key_names_do_not_grow_memory_and_are_still_masked():
    from dolibarr_webhooks.credentials import MAX_REMEMBERED

    scrubber = Scrubber()
    for start in range(0, 2 * MAX_REMEMBERED, 1000):
        body = {f"k{i}": 1 for i in range(start, start + 1000)}
        body[f"x{start}_password"] = "pw"
        scrubber.clean(body)
        assert body[f"x{start}_password"] == MARKER and body[f"k{start}"] == 1
    assert len(scrubber._seen) <= MAX_REMEMBERED + 1001
