"""Who is posting: find the source whose secret the request carries.

Dolibarr signs nothing; an admin can only put the secret in the URL or in
``https://user:pass@host``. Other senders may sign the raw body (HMAC hex in
``X-Dolibarr-Signature``, or Standard Webhooks headers). Every comparison is
constant-time, and no secret ever reaches a log or an error message. And from where: the
client's real address behind reverse proxies, and IP allow-lists. No Flask here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

from .. import signing
from ..settings import Source

SIGNATURE_HEADER = "X-Dolibarr-Signature"


class AuthError(Exception):
    """Missing or wrong credentials (401). The message is safe to show."""


@dataclass(frozen=True)
class Credentials:
    """Everything in a request that may carry a secret."""

    path_token: str | None = None
    query_token: str | None = None
    authorization: str | None = None
    signature: str | None = None
    webhook_id: str | None = None
    webhook_timestamp: str | None = None
    webhook_signature: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], path_token: str | None = None,
                     query_token: str | None = None) -> Credentials:
        return cls(
            path_token=path_token, query_token=query_token,
            authorization=headers.get("Authorization"), signature=headers.get(SIGNATURE_HEADER),
            webhook_id=headers.get("webhook-id"), webhook_timestamp=headers.get("webhook-timestamp"),
            webhook_signature=headers.get("webhook-signature"),
        )

    @property
    def present(self) -> bool:
        return any((self.path_token, self.query_token, self.authorization, self.signature, self.webhook_signature))


def _equal(given: str | bytes, secret: str | bytes) -> bool:
    if isinstance(given, str):
        given = given.encode()
    if isinstance(secret, str):
        secret = secret.encode()
    return hmac.compare_digest(given, secret)


def _tokens(credentials: Credentials) -> list[str]:
    """Plain secrets the request may carry: path, query, Bearer, Basic user or password."""
    tokens = [t for t in (credentials.path_token, credentials.query_token) if t]
    scheme, _, value = (credentials.authorization or "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        tokens.append(value)
    elif scheme.lower() == "basic" and value:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError("malformed Basic credentials") from None
        # https://user:SECRET@host/ is what a Dolibarr admin can type; accept the secret as either part.
        tokens.extend(t for t in (password, user) if t)
    return tokens


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _signature_matches(secret: str, credentials: Credentials, body: bytes, now: float) -> bool:
    if credentials.signature:
        given = credentials.signature.strip()
        if given.lower().startswith("sha256="):
            given = given[7:]
        if _equal(given.lower(), hmac_hex(secret, body)):
            return True
    if credentials.webhook_signature and credentials.webhook_id and credentials.webhook_timestamp:
        return signing.verify(signing.signing_key(secret), credentials.webhook_id, credentials.webhook_timestamp,
                              credentials.webhook_signature, body, now)
    return False


def authenticate(sources: Iterable[Source], credentials: Credentials, body: bytes,
                 now: float | None = None) -> Source:
    """The source whose secret the request carries, or ``AuthError``."""
    if not credentials.present:
        raise AuthError("credentials required: put the secret in the URL (/webhook/<secret> or ?token=), "
                        "or send Authorization or a signature header")
    now = time.time() if now is None else now
    tokens = _tokens(credentials)
    for source in sources:
        for secret in source.secrets:
            # Compare against every token, no early exit inside a source's secrets.
            if any(_equal(token, secret) for token in tokens) or _signature_matches(secret, credentials, body, now):
                return source
    raise AuthError("wrong credentials")


# -- where from ---------------------------------------------------------------------------
def client_address(remote_addr: str | None, forwarded_for: str | None, trusted_proxies: int) -> str:
    """The address of the client as the outermost trusted proxy saw it.

    Each trusted proxy appends the address it received the request from, so only the
    last ``trusted_proxies`` entries of X-Forwarded-For are ours; anything to their left
    was written by the client and is ignored.
    """
    if trusted_proxies <= 0 or not forwarded_for:
        return remote_addr or ""
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    if len(hops) < trusted_proxies:
        return remote_addr or ""
    return hops[-trusted_proxies]


def address_allowed(address: str, networks: Iterable[ipaddress._BaseNetwork]) -> bool:
    """Whether ``address`` is in one of ``networks``; an empty list allows everyone."""
    networks = list(networks)
    if not networks:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)
