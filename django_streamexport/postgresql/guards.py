"""Database guards set for the length of one export's transaction (PostgreSQL).

Both are ``SET LOCAL``, sent in one round trip, so they end
with the export's transaction and never leak into the next use of a
persistent or pooled connection.  Other databases have no such settings and
are left alone.

* ``statement_timeout``: with the ``WITHOUT HOLD`` cursor each ``FETCH`` is
  one statement, so the limit applies *per fetch* (the first fetch includes
  sorting), not to the whole export (PostgreSQL docs, "Client Connection
  Defaults", ``statement_timeout``).  A cancelled fetch raises SQLSTATE 57014.
* ``idle_in_transaction_session_timeout``: the transaction is idle while the
  server waits for the client to take the bytes already rendered; a client
  so slow that no ``FETCH`` is sent for this long gets its session ended by
  PostgreSQL (SQLSTATE 25P03, ``FATAL``), and the next fetch fails
  (PostgreSQL docs, "Client Connection Defaults",
  ``idle_in_transaction_session_timeout``; ``tests/test_faults.py``).
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

#: The largest ``statement_timeout`` and ``idle_in_transaction_session_timeout`` PostgreSQL
#: accepts, in milliseconds (``pg_settings.max_val``: INT_MAX).
MAX_TIMEOUT_MS = 2_147_483_647


def milliseconds(seconds: float) -> int:
    """Return ``seconds`` as whole milliseconds, at least 1 (PostgreSQL's unit for both)."""
    return max(1, round(float(seconds) * 1000))


def apply_guards(
    connection: BaseDatabaseWrapper,
    *,
    statement_timeout: float | None,
    idle_in_transaction_timeout: float | None,
) -> None:
    """Set the export's timeouts (seconds; ``None`` or 0 keeps the server's) on ``connection``.

    Call inside the export's transaction (``SET LOCAL`` outside one has no
    effect).  Does nothing on databases other than PostgreSQL.
    """
    if connection.vendor != "postgresql":
        return
    values = []
    if statement_timeout:
        values.append(("statement_timeout", milliseconds(statement_timeout)))
    if idle_in_transaction_timeout:
        values.append(
            ("idle_in_transaction_session_timeout", milliseconds(idle_in_transaction_timeout))
        )
    if not values:
        return
    # Integers formatted by us, so no parameters: SET takes none in the extended
    # protocol, and without parameters both drivers accept two statements at once.
    sql = "; ".join(f"SET LOCAL {name} = {value:d}" for name, value in values)
    with connection.cursor() as cursor:
        cursor.execute(sql)
