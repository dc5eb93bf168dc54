"""The database planner's estimate of an export's rows (for progress and ``background="auto"``)."""

from __future__ import annotations

import json
import logging

from django.db import DatabaseError, connections

from django_streamexport.columns import compile_query
from django_streamexport.plan import ExportPlan
from django_streamexport.postgresql.explain import plan_query

__all__ = ["estimate_rows"]

logger = logging.getLogger("django_streamexport")


def estimate_rows(plan: ExportPlan) -> int | None:
    """Return the planner's estimate of the rows ``plan`` exports, or ``None``.

    PostgreSQL only: ``EXPLAIN (FORMAT JSON)`` of the export's query, its top node's
    ``Plan Rows`` (an estimate from the table statistics ``ANALYZE`` keeps; it can be
    far off on a table that changed since), capped at ``plan.max_rows``.  The query is
    planned, never run, as the start-up check plans it
    (:func:`~django_streamexport.postgresql.explain.plan_query`: JIT off, the export's
    ``statement_timeout``, a savepoint inside a transaction; milliseconds).  ``None`` on
    other databases, and when planning fails (the export itself then reports the error).
    """
    connection = connections[plan.using]
    if connection.vendor != "postgresql":
        return None
    query = compile_query(plan.queryset, plan.columns, plan.using)
    if query.empty:
        return 0
    try:
        (document,) = plan_query(
            connection,
            query.sql,
            query.params,
            statement_timeout=plan.statement_timeout,
            options="FORMAT JSON",
        )
    except DatabaseError:
        logger.debug("Export %s: the row estimate failed.", plan.export_id, exc_info=True)
        return None
    if isinstance(document, str):  # psycopg2 without a JSON loader, or psycopg 3's text
        document = json.loads(document)
    rows = int(document[0]["Plan"]["Plan Rows"])
    return min(rows, plan.max_rows) if plan.max_rows is not None else rows
