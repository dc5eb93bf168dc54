"""Plan a query without running it: how the start-up check asks PostgreSQL about a query.

``EXPLAIN`` has the driver adapt the parameters (psycopg refuses a NUL byte in text) and the
server parse, analyze and plan the statement (planning compiles constant regular
expressions, to estimate how many rows they match), and nothing runs.  ``EXPLAIN`` also
starts the executor, which JIT-compiles the plan's expressions when the plan costs more
than ``jit_above_cost``: 24-85 ms for the example project's unfiltered flights CSV query on
the 2-core test machine, against 5-7 ms with JIT off.  So the statement runs with
``SET LOCAL jit = off``, which ends with its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

from django_streamexport.postgresql.driver import is_psycopg3

__all__ = ["plan_query"]

#: Turns JIT off for the rest of the transaction (PostgreSQL docs, SET: "SET LOCAL").
NO_JIT = "SET LOCAL jit = off"


def plan_query(connection: Any, sql: str, params: Sequence[Any]) -> list[str]:
    """Have PostgreSQL plan ``sql`` with ``params`` on Django ``connection``; run nothing.

    Returns the plan, ``EXPLAIN``'s lines.  In autocommit, one round trip when the driver
    binds parameters on the client (psycopg2, and Django's default psycopg 3 cursor):
    ``SET LOCAL`` and ``EXPLAIN`` go as one simple query, whose statements PostgreSQL
    runs as one implicit transaction (docs, "Multiple Statements in a Simple Query").
    With server-side binding (``OPTIONS`` ``"server_side_binding": True``), in a
    transaction of its own.  Inside the caller's transaction, in a savepoint that is
    rolled back after, so the transaction is as it was and still usable after an error.
    Raises what the driver and the server raise (as ``django.db`` errors, or the
    driver's ``ValueError``).
    """
    explain = f"EXPLAIN {sql}"
    if not connection.get_autocommit():
        savepoint = transaction.savepoint(using=connection.alias)
        try:
            with connection.cursor() as cursor:
                cursor.execute(NO_JIT)
                cursor.execute(explain, params)
                return _lines(cursor)
        finally:
            transaction.savepoint_rollback(savepoint, using=connection.alias)
    with connection.cursor() as cursor:
        if _binds_on_the_client(cursor):
            cursor.execute(f"{NO_JIT}; {explain}", params)
            if is_psycopg3():
                cursor.nextset()  # psycopg 3 keeps each statement's result; psycopg2 the last
            return _lines(cursor)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(NO_JIT)
        cursor.execute(explain, params)
        return _lines(cursor)


def _lines(cursor: Any) -> list[str]:
    return [row[0] for row in cursor.fetchall()]


def _binds_on_the_client(cursor: Any) -> bool:
    """Say whether Django ``cursor`` merges parameters into the query (simple protocol)."""
    if not is_psycopg3():
        return True  # psycopg2 always does
    from psycopg import ClientCursor

    return isinstance(cursor.cursor, ClientCursor)
