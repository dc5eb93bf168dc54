"""Plan a query without running it: how the start-up check asks PostgreSQL about a query.

``EXPLAIN`` has the driver adapt the parameters (psycopg refuses a NUL byte in text) and the
server parse, analyze and plan the statement (planning compiles constant regular
expressions, to estimate how many rows they match), and nothing runs.  ``EXPLAIN`` also
starts the executor, which JIT-compiles the plan's expressions when the plan costs more
than ``jit_above_cost``: 24-85 ms for the example project's flights query as database
formatting wraps it, on a loaded 2-core machine, against 5-7 ms with JIT off.  So the
statement runs with ``SET LOCAL jit = off``, which ends with its transaction.  Planning
takes a share lock on each table, so a table locked by another session (``ALTER TABLE``,
``VACUUM FULL``) makes it wait: the export's ``statement_timeout`` bounds that wait as it
bounds the export's statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

from django_streamexport.postgresql.driver import is_psycopg3
from django_streamexport.postgresql.guards import milliseconds

__all__ = ["plan_query"]

#: Turns JIT off for the rest of the transaction (PostgreSQL docs, SET: "SET LOCAL").
NO_JIT = "SET LOCAL jit = off"


def plan_query(
    connection: Any,
    sql: str,
    params: Sequence[Any],
    *,
    statement_timeout: float | None = None,
    options: str = "",
) -> list[Any]:
    """Have PostgreSQL plan ``sql`` with ``params`` on Django ``connection``; run nothing.

    Returns the plan, ``EXPLAIN``'s rows' one value each: the text lines, or with
    ``options="FORMAT JSON"`` (``EXPLAIN``'s options, PostgreSQL docs) one JSON document
    (a ``list``, or its text where the driver does not load JSON).  ``statement_timeout``
    (seconds; ``None`` or 0 keeps the server's) bounds the statement, as
    :func:`~django_streamexport.postgresql.guards.apply_guards` bounds the export's; past
    it PostgreSQL cancels it (SQLSTATE 57014, an ``OperationalError``).

    In autocommit, one round trip when the driver binds parameters on the client
    (psycopg2, and Django's default psycopg 3 cursor): the ``SET LOCAL`` settings and
    ``EXPLAIN`` go as one simple query, whose statements PostgreSQL runs as one
    implicit transaction (docs, "Multiple Statements in a Simple Query").  With
    server-side binding (``OPTIONS`` ``"server_side_binding": True``), in a transaction
    of its own.  Inside the caller's transaction, in a savepoint that is rolled back
    after, so the transaction is as it was and still usable after an error.  Raises
    what the driver and the server raise (as ``django.db`` errors, or the driver's
    ``ValueError``).
    """
    explain = f"EXPLAIN ({options}) {sql}" if options else f"EXPLAIN {sql}"
    # Integers formatted here: SET takes no parameters in the extended protocol.
    settings = NO_JIT
    if statement_timeout:
        settings += f"; SET LOCAL statement_timeout = {milliseconds(statement_timeout):d}"
    if not connection.get_autocommit():
        savepoint = connection.savepoint()  # transaction.savepoint() is deprecated in 6.1
        try:
            with connection.cursor() as cursor:
                cursor.execute(settings)
                cursor.execute(explain, params)
                return _lines(cursor)
        finally:
            connection.savepoint_rollback(savepoint)
    with connection.cursor() as cursor:
        if _binds_on_the_client(cursor):
            cursor.execute(f"{settings}; {explain}", params)
            if is_psycopg3():
                while cursor.nextset():  # psycopg 3 keeps each statement's result
                    continue
            return _lines(cursor)
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute(settings)
        cursor.execute(explain, params)
        return _lines(cursor)


def _lines(cursor: Any) -> list[Any]:
    return [row[0] for row in cursor.fetchall()]


def _binds_on_the_client(cursor: Any) -> bool:
    """Say whether Django ``cursor`` merges parameters into the query (simple protocol)."""
    if not is_psycopg3():
        return True  # psycopg2 always does
    from psycopg import ClientCursor

    return isinstance(cursor.cursor, ClientCursor)
