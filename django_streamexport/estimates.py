"""The database planner's estimate of an export's rows (for progress and ``background="auto"``)."""

from __future__ import annotations

import json
import logging

from django.db import DatabaseError, connections, transaction

from django_streamexport.columns import compile_query
from django_streamexport.plan import ExportPlan

__all__ = ["estimate_rows"]

logger = logging.getLogger("django_streamexport")


def estimate_rows(plan: ExportPlan) -> int | None:
    """Return the planner's estimate of the rows ``plan`` exports, or ``None``.

    PostgreSQL only: ``EXPLAIN (FORMAT JSON)`` of the export's query, its top node's
    ``Plan Rows`` (an estimate from the table statistics ``ANALYZE`` keeps; it can be
    far off on a table that changed since), capped at ``plan.max_rows``.  The query is
    planned, never run (milliseconds).  ``None`` on other databases, and when planning
    fails (the export itself then reports the error).
    """
    connection = connections[plan.using]
    if connection.vendor != "postgresql":
        return None
    query = compile_query(plan.queryset, plan.columns, plan.using)
    if query.empty:
        return 0
    try:
        # A savepoint inside a caller's transaction, so a refused plan does not break it.
        with transaction.atomic(using=plan.using), connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (FORMAT JSON) {query.sql}", query.params)
            (document,) = cursor.fetchone()
    except DatabaseError:
        logger.debug("Export %s: the row estimate failed.", plan.export_id, exc_info=True)
        return None
    if isinstance(document, str):  # psycopg2 without a JSON loader, or psycopg 3's text
        document = json.loads(document)
    rows = int(document[0]["Plan"]["Plan Rows"])
    return min(rows, plan.max_rows) if plan.max_rows is not None else rows
