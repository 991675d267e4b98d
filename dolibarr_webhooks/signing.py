"""Standard Webhooks signatures (https://www.standardwebhooks.com/): one implementation for the
receiver, which verifies them (auth.py), and for plugins that send signed requests (sync).

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``; the key is
the base64 after ``whsec_``, or the UTF-8 bytes of any other secret. This is what the
``standardwebhooks`` package does (the tests check ours against it); it is not used at run
time because its ``sign`` takes the body as ``str`` (ours are bytes, not always UTF-8), its
``verify`` parses the body as JSON, reads the clock itself and raises plain ``ValueError`` on a
malformed header. No Flask here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

SECRET_PREFIX = "whsec_"
# The three headers of a signed request; a sender must not let other headers replace them.
HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})
TOLERANCE = 300  # seconds either side of now, as the Standard Webhooks libraries


def signing_key(secret: str | bytes) -> bytes:
    """The HMAC key for a secret: the bytes of ``whsec_<base64>`` (padding optional, as the
    libraries read it), else the secret's own UTF-8 bytes (also when the base64 is broken or empty)."""
    if isinstance(secret, bytes):
        return secret
    key = b""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):] + "==")
        except binascii.Error:
            pass
    return key or secret.encode("utf-8")


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` value for the exact bytes sent."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signature_headers(key: bytes, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers of a signed request, stamped now unless ``timestamp`` is given."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(stamp),
            "webhook-signature": sign(key, msg_id, stamp, body)}


def verify(key: bytes, msg_id: str, timestamp: str, signatures: str, body: bytes,
           now: float | None = None, tolerance: float = TOLERANCE) -> bool:
    """Whether one of the space-separated ``signatures`` signs ``body``, stamped within
    ``tolerance`` of ``now``. Constant-time; a malformed header is a mismatch, not an error."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        return False
    expected = sign(key, msg_id, timestamp, body).encode()
    # Compare every candidate: no early exit that would time which one matched.
    return any([hmac.compare_digest(candidate.encode(), expected) for candidate in signatures.split()])
