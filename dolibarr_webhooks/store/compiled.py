"""The store's Core statements compiled once per dialect, for the driver's cursor
(``sqlite_fast``, ``postgres_fast``): the SQL and its parameters stay those of the
statements in ``store``, without SQLAlchemy's execution around each run (issue #15)."""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy.sql import ClauseElement

_compiled: dict[tuple[int, tuple[str, ...] | None, str], tuple[str, tuple[str, ...], dict[str, Any]]] = {}


def compiled_once(dialect, statement: ClauseElement, keys: Sequence[str] | None):
    """(SQL, parameter names in order, values of the statement's own parameters: LIMIT...),
    compiled at the first call for this statement, ``keys`` and dialect. The names are ()
    for a dialect that takes the parameters by name (PostgreSQL's ``%(name)s``). The
    statement is kept alive by the caller: it is found again by identity."""
    cache_key = (id(statement), tuple(keys) if keys is not None else None, dialect.name)
    found = _compiled.get(cache_key)
    if found is None:
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        own = {name: bind.value for name, bind in compiled.binds.items() if bind.value is not None}
        found = _compiled[cache_key] = (compiled.string, tuple(compiled.positiontup or ()), own)
    return found
