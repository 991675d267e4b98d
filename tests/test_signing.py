"""Standard Webhooks signing, checked against the reference library (``standardwebhooks``)."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook

from dolibarr_webhooks import signing

BODY = b'{"type":"BILL_PAYED","data":{"ref":"FA2611-0042","name":"Caf\xc3\xa9"}}'
STAMP = 1700000000


@pytest.mark.parametrize("secret", [
    "whsec_" + base64.b64encode(b"k" * 24).decode(),
    "whsec_" + base64.b64encode(b"k" * 25).decode().rstrip("="),  # unpadded, as the libraries accept
])
def test_whsec_secret_signs_as_the_reference_library(secret):
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(STAMP, timezone.utc), BODY.decode())
    assert signing.sign(signing.signing_key(secret), "msg_1", STAMP, BODY) == theirs


def test_raw_secret_is_its_utf8_bytes():
    when = datetime.fromtimestamp(STAMP, timezone.utc)
    theirs = Webhook("pâte à crêpes".encode()).sign("msg_1", when, BODY.decode())
    assert signing.sign(signing.signing_key("pâte à crêpes"), "msg_1", STAMP, BODY) == theirs
    assert signing.signing_key("whsec_@") == b"whsec_@"  # not base64: the secret's own bytes


def test_signed_headers_verify_with_the_reference_library():
    key = signing.signing_key("whsec_" + base64.b64encode(b"s" * 32).decode())
    headers = signing.signature_headers(key, "msg_2", BODY)
    assert set(headers) == signing.HEADERS
    assert Webhook(key).verify(BODY, headers)["type"] == "BILL_PAYED"


def test_verify():
    key = b"k" * 24
    good = signing.sign(key, "msg_1", STAMP, BODY)
    assert signing.verify(key, "msg_1", str(STAMP), good, BODY, now=STAMP + 10)
    assert signing.verify(key, "msg_1", str(STAMP), "v1,bm9wZQ== " + good, BODY, now=STAMP)  # rotation
    assert not signing.verify(key, "msg_1", str(STAMP), good, BODY + b" ", now=STAMP)
    assert not signing.verify(key, "msg_2", str(STAMP), good, BODY, now=STAMP)
    assert not signing.verify(b"other", "msg_1", str(STAMP), good, BODY, now=STAMP)
    assert not signing.verify(key, "msg_1", str(STAMP), good, BODY, now=STAMP + signing.TOLERANCE + 1)
    assert not signing.verify(key, "msg_1", "soon", good, BODY, now=STAMP)
    assert not signing.verify(key, "msg_1", str(STAMP), "é,garbage", BODY, now=STAMP)
