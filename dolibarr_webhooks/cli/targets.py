"""The URL to give Dolibarr, and whether Dolibarr will post to it: shared by ``serve``, which
prints it, and ``check``, which checks it."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit


ALL_INTERFACES = ("0.0.0.0", "::", "")


def reachable_address() -> str:
    """This host's address on the network its default route leads to: the one another machine
    (Dolibarr's) most likely reaches it at. Connecting a UDP socket sends nothing."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
        return probe.getsockname()[0]
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def target_url(settings, secret: str) -> str:
    """The URL to give Dolibarr: PUBLIC_URL, else the address the service listens on, else (on
    every interface) this host's reachable address."""
    host = settings["HOST"]
    if host in ALL_INTERFACES:
        host = reachable_address()
    if ":" in host:
        host = f"[{host}]"
    base = settings["PUBLIC_URL"] or f"http://{host}:{settings['PORT']}"
    return f"{base.rstrip('/')}/webhook/{secret}"


def is_local_url(url: str) -> bool:
    """Whether Dolibarr 23.0.3+ refuses this URL unless $dolibarr_allow_localurl_for_webhooks = 1."""
    host = urlsplit(url).hostname or ""
    if host in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            return False
    return ip.is_private or ip.is_loopback or ip.is_reserved or ip.is_link_local


LOCAL_URL_WARNING = ("this URL is local or private: Dolibarr 23.0.3 and later refuse to post to it unless "
                     "conf.php sets $dolibarr_allow_localurl_for_webhooks = 1;")
