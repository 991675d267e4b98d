"""The client's real address behind reverse proxies, and IP allow-lists. No Flask here."""

from __future__ import annotations

import ipaddress
from typing import Iterable


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
