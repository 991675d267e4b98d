"""What a store operation raises: ``StoreError``, whose ``kind`` tells an outage from a
timeout or data the store refuses; the one place that classifies the driver's errors."""

from __future__ import annotations

from sqlalchemy.exc import DataError, IntegrityError, OperationalError, SQLAlchemyError

from ..database_url import libpq_url
from ..logs import redact

# What went wrong with a store operation (StoreError.kind): the answer to Dolibarr, the log
# line and the metric depend on it.
UNAVAILABLE = "unavailable"  # the store cannot be reached or written: try again later (503)
TIMEOUT = "timeout"  # the request's deadline passed, waiting for a lock or the store (503)
DATA = "data"  # the store refused this event's data: trying again will not help
STORE_ERROR_KINDS = (UNAVAILABLE, TIMEOUT, DATA)

# SQLSTATEs of a PostgreSQL statement ended by statement_timeout or lock_timeout.
_PG_TIMEOUTS = {"57014", "55P03"}
# SQLite's words for a write lock it could not get within the busy timeout.
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")


class StoreError(Exception):
    """The store did not take an operation; ``kind`` says why (one of STORE_ERROR_KINDS)."""

    def __init__(self, message: str, kind: str = UNAVAILABLE) -> None:
        super().__init__(message)
        self.kind = kind


class DeadlinePassed(Exception):
    """The request's deadline passed before the store took the event (nothing was written)."""


def classify_error(exc: BaseException) -> str:
    """The kind of a store failure: the one place that tells an outage from bad data."""
    if isinstance(exc, (DeadlinePassed, TimeoutError)):
        return TIMEOUT
    cause = getattr(exc, "orig", None) or exc
    if isinstance(cause, UnicodeError) or isinstance(exc, (DataError, IntegrityError)):
        return DATA
    if getattr(cause, "sqlstate", None) in _PG_TIMEOUTS:
        return TIMEOUT
    if isinstance(exc, OperationalError) and str(cause).startswith(_SQLITE_BUSY):
        return TIMEOUT
    return UNAVAILABLE


# What a store operation may raise besides StoreError: the driver's errors, a deadline, the
# writers' lock file (OSError), text the driver cannot encode.
FAILURES = (SQLAlchemyError, DeadlinePassed, OSError, UnicodeError)


# What an operation on the store raises when the store is down, full or out of reach: what the
# worker waits through and the commands and the dashboard say in one line (``unavailable``).
STORE_ERRORS = (SQLAlchemyError, StoreError)


def unavailable(url: str, exc: BaseException) -> str:
    """The one line that says a store cannot be used, naming it as a person writes it (no
    driver name, its password masked)."""
    return f"the store at {redact(libpq_url(url), keep_user=True)} is unavailable ({error_line(exc)})"


def store_error(exc: BaseException) -> StoreError:
    return StoreError(error_line(exc), classify_error(exc))


def error_line(exc: BaseException) -> str:
    """One line for an operator: the driver's error and its first line (disk full,
    read-only...), without SQLAlchemy's dump of the statement and its parameters. A
    ``StoreError`` says it already (``store_error``)."""
    if isinstance(exc, StoreError):
        return str(exc)[:300]
    cause = getattr(exc, "orig", None) or exc
    detail = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {detail[0] if detail else ''}".rstrip(": ")[:300]
