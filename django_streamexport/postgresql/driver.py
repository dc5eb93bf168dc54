"""The PostgreSQL driver: the one place that asks which psycopg Django uses and what it has.

Django's PostgreSQL backend imports psycopg 3 when it can and falls back to psycopg2
(``django/db/backends/postgresql/psycopg_any.py``), so having psycopg2 installed does not
mean it is used.  The fast paths need psycopg 3 and a few of its lower-level pieces
(``psycopg.generators``, ``psycopg.pq``, ``psycopg.adapt.Transformer``), which are not
covered by psycopg's compatibility promise: ``pyproject.toml`` bounds psycopg to the
versions the test matrix runs (lowest and highest), and :func:`psycopg_internals` returns
``None`` when a piece is missing, so the export falls back to Django's cursor rather than
fail.
"""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

from django.conf import settings

__all__ = ["driver_name", "is_psycopg3", "psycopg_internals", "use_fast_loaders"]


@cache
def is_psycopg3() -> bool:
    """Say whether Django's PostgreSQL backend uses psycopg 3 in this process."""
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3 as used
    except ImportError:  # no driver installed
        return False
    return bool(used)


def driver_name() -> str | None:
    """Return ``"psycopg"`` or ``"psycopg2"``: the driver Django uses, or ``None`` if neither."""
    try:
        from django.db.backends.postgresql import psycopg_any  # noqa: F401
    except ImportError:
        return None
    return "psycopg" if is_psycopg3() else "psycopg2"


def psycopg_internals() -> Any:
    """Return the psycopg 3 pieces the fast paths use, or ``None`` where one is missing.

    The namespace holds ``errors``, ``pq``, ``Transformer``, ``send`` and ``fetch_many``
    (``psycopg.generators``) and ``Wait`` (``psycopg.waiting``).  ``None`` under
    psycopg2, or under a psycopg 3 that lacks one of them.  Looked up on each call
    (modules are imported once; the lookup is a few attribute reads per export).
    """
    if not is_psycopg3():
        return None
    try:
        from psycopg import errors, generators, pq
        from psycopg.adapt import Transformer
        from psycopg.waiting import Wait

        return SimpleNamespace(
            errors=errors,
            pq=pq,
            Transformer=Transformer,
            send=generators.send,
            fetch_many=generators.fetch_many,
            Wait=Wait,
        )
    except (ImportError, AttributeError):
        return None


def raw_connection(connection: Any) -> Any:
    """Return the psycopg 3 connection under Django ``connection`` (open), or ``None``."""
    if connection.vendor != "postgresql" or psycopg_internals() is None:
        return None
    raw = connection.connection
    if raw is None or not (hasattr(raw, "pgconn") and hasattr(raw, "wait")):
        return None
    return raw


def use_fast_loaders(connection: Any, cursor: Any) -> None:
    """Let psycopg 3 load ``timestamptz`` with its C loader on this export's cursor.

    Django registers a pure-Python ``timestamptz`` loader on every psycopg 3
    connection (``psycopg_any.BaseTzLoader``) to replace each value's ``tzinfo``;
    for an export it costs more than all other columns together.  Under ``USE_TZ``
    the session time zone is UTC, so psycopg's own loader gives the same instants in
    UTC (the same ``isoformat()``).  Registered on this cursor only; the connection
    keeps Django's loader.  A no-op for psycopg2, other databases, a session time zone
    other than UTC and ``USE_TZ = False`` (naive values).
    """
    if connection.vendor != "postgresql" or not settings.USE_TZ or not is_psycopg3():
        return
    adapters = getattr(getattr(cursor, "cursor", None), "adapters", None)
    if adapters is None or connection.timezone_name != "UTC":
        return
    from psycopg.types.datetime import TimestamptzLoader

    adapters.register_loader("timestamptz", TimestamptzLoader)
