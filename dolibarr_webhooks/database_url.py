"""The store's URL in its forms: as an operator writes it (libpq's, several servers
included), and as SQLAlchemy takes it. The settings read it here, to refuse in one line a
URL no store can use; the store connects with what ``normalise_url`` makes of it."""

from __future__ import annotations

import re

# libpq's form of several servers, each tried in turn: postgresql://user@db1:5432,db2:5432/name
# (what libpq's and Patroni's documentation write, with ?target_session_attrs=read-write).
_LIBPQ_HOSTS = re.compile(r"(?P<head>postgresql\+psycopg://(?:[^/?#@]*@)?)(?P<hosts>[^/?#@]*,[^/?#@]*)"
                          r"(?P<path>/[^?#]*)?(?:\?(?P<query>.*))?")
_HOST_AND_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(:\d+)?")  # db1, db1:5432, [::1]:5432, /run/postgresql


def normalise_url(url: str) -> str:
    """The store URL as SQLAlchemy takes it: its psycopg driver named, and libpq's several
    servers (``host1:5432,host2:5432``) in SQLAlchemy's form, ``?host=host1:5432&host=host2:5432``
    (SQLAlchemy gives them back to libpq as libpq writes them)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    several = _LIBPQ_HOSTS.fullmatch(url)
    if several:
        hosts = [f"host={host}" for host in several["hosts"].split(",") if host]
        url = f"{several['head']}{several['path'] or '/'}?{'&'.join(hosts + [several['query'] or ''])}".rstrip("&")
    return url


def libpq_url(url: str) -> str:
    """A PostgreSQL URL without the driver's name that ``normalise_url`` gives it: to show it,
    or for libpq when it names one server (``store.driver_connect_args`` takes several)."""
    return normalise_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


def unusable(url: str) -> bool:
    """Whether SQLAlchemy cannot read ``url``, or one of its servers has a port that is not a
    number (which SQLAlchemy finds only when it connects)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        hosts = make_url(normalise_url(url)).query.get("host", ())
    except (ArgumentError, ValueError):
        return True
    return not all(_HOST_AND_PORT.fullmatch(host) for host in ((hosts,) if isinstance(hosts, str) else hosts))
