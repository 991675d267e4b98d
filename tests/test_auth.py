"""Every way a sender can prove it knows a secret, checked without Flask."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook

from dolibarr_webhooks.pipeline.verify import AuthError, Credentials, authenticate, hmac_hex
from dolibarr_webhooks.settings import Source
from dolibarr_webhooks.pipeline.verify import address_allowed, client_address
from dolibarr_webhooks.settings import parse_networks

SHOP = Source("shop", secrets=("shop-secret-0123456789", "shop-old-secret-01234"))
OTHER = Source("other", secrets=("whsec_" + base64.b64encode(b"k" * 24).decode(),))
SOURCES = [SHOP, OTHER]
BODY = b'{"triggercode":"BILL_PAYED","object":{"id":1}}'


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("credentials", [
    Credentials(path_token="shop-secret-0123456789"),
    Credentials(query_token="shop-secret-0123456789"),
    Credentials(authorization="Bearer shop-secret-0123456789"),
    Credentials(authorization=basic("dolibarr", "shop-secret-0123456789")),
    Credentials(authorization=basic("shop-secret-0123456789", "")),
    Credentials(signature=hmac_hex("shop-secret-0123456789", BODY)),
    Credentials(signature="sha256=" + hmac_hex("shop-secret-0123456789", BODY)),
    Credentials(path_token="shop-old-secret-01234"),  # rotation: the old one still works
])
def test_accepted(credentials):
    assert authenticate(SOURCES, credentials, BODY) is SHOP


def test_standard_webhooks_signature_from_the_reference_library():
    secret = OTHER.secrets[0]
    stamp = int(time.time())
    signature = Webhook(secret).sign("msg_1", __import__("datetime").datetime.fromtimestamp(stamp), BODY.decode())
    credentials = Credentials(webhook_id="msg_1", webhook_timestamp=str(stamp), webhook_signature=signature)
    assert authenticate(SOURCES, credentials, BODY) is OTHER
    stale = Credentials(webhook_id="msg_1", webhook_timestamp=str(stamp - 3600), webhook_signature=signature)
    with pytest.raises(AuthError):
        authenticate(SOURCES, stale, BODY)


@pytest.mark.parametrize("credentials", [
    Credentials(path_token="shop-secret-012345678"),
    Credentials(authorization="Bearer nope"),
    Credentials(authorization=basic("shop", "wrong")),
    Credentials(signature=hmac_hex("shop-secret-0123456789", BODY + b" ")),  # re-serialised body fails
    Credentials(signature=hmac_hex("wrong", BODY)),
])
def test_refused(credentials):
    with pytest.raises(AuthError, match="wrong credentials"):
        authenticate(SOURCES, credentials, BODY)


def test_missing_and_malformed():
    with pytest.raises(AuthError, match="credentials required"):
        authenticate(SOURCES, Credentials(), BODY)
    with pytest.raises(AuthError, match="malformed"):
        authenticate(SOURCES, Credentials(authorization="Basic !!!"), BODY)


def test_error_messages_never_contain_a_secret():
    for creds in (Credentials(path_token="x" * 20), Credentials(authorization="Bearer " + "y" * 20)):
        with pytest.raises(AuthError) as info:
            authenticate(SOURCES, creds, BODY)
        assert "x" * 20 not in str(info.value) and "shop-secret" not in str(info.value)


def test_client_address_trusts_only_configured_proxies():
    assert client_address("10.0.0.1", "6.6.6.6", 0) == "10.0.0.1"  # no proxy: header ignored
    assert client_address("127.0.0.1", "203.0.113.7", 1) == "203.0.113.7"
    # A client forging X-Forwarded-For: the proxy appends the real address, we take the last one.
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.7", 1) == "203.0.113.7"
    assert client_address("127.0.0.1", "1.2.3.4, 203.0.113.7, 10.0.0.2", 2) == "203.0.113.7"
    assert client_address("127.0.0.1", "", 1) == "127.0.0.1"


def test_allow_list_with_cidr():
    networks = parse_networks("192.0.2.0/24, 2001:db8::/32, 127.0.0.1")
    assert address_allowed("192.0.2.55", networks)
    assert address_allowed("::ffff:192.0.2.55", networks)
    assert address_allowed("2001:db8::1", networks)
    assert not address_allowed("198.51.100.1", networks)
    assert not address_allowed("garbage", networks)
    assert address_allowed("198.51.100.1", [])
