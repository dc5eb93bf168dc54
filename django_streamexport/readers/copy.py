"""Read a CSV export's body from PostgreSQL ``COPY ... TO STDOUT`` (COPY mode)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

from django_streamexport.postgresql.copy import block_reader, crlf_rows
from django_streamexport.postgresql.guards import IdleWatch, idle_timeout_error
from django_streamexport.postgresql.text import prepare_session
from django_streamexport.readers.base import Reader

if TYPE_CHECKING:
    from django_streamexport.columns import CompiledQuery
    from django_streamexport.plan import ExportPlan

__all__ = ["CopyReader"]


class CopyReader(Reader):
    """Yield the CSV body that ``COPY`` writes, in chunks of about ``plan.buffer_size`` bytes.

    ``statement`` and ``params`` come from
    :func:`~django_streamexport.postgresql.copy.copy_statement`; ``query`` is the
    compiled query the statement copies (:meth:`first_select`).  COPY runs in a
    transaction with the export's guards and the session settings of
    :func:`~django_streamexport.postgresql.text.prepare_session`; its blocks (one per
    row) are joined into chunks with CRLF line ends.  The first chunk holds one row, so
    it leaves at once.  COPY is one statement: ``statement_timeout`` bounds the whole
    export here, not each fetch as on the cursor path.  Closing early (a client
    disconnect) leaves the COPY, which rolls the transaction back.
    """

    name = "copy"
    renders = True

    def __init__(
        self,
        plan: ExportPlan,
        statement: str,
        params: list[Any],
        *,
        query: CompiledQuery | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(plan, reason=reason)
        self.statement = statement
        self.params = params
        self.query = query

    def first_select(self) -> tuple[str, Sequence[Any]] | None:
        """Return the export's query, which COPY writes out (when it was given).

        The query the statement wraps holds every value of the filters; the wrapping
        (:func:`~django_streamexport.postgresql.text.text_select`) adds only the code's.
        """
        if self.query is None or self.query.empty:
            return None
        return self.query.sql, self.query.params

    def read(self) -> Iterator[tuple[bytes, int]]:
        plan = self.plan
        connection = connections[plan.using]
        with transaction.atomic(using=plan.using):
            self.apply_guards(connection)
            prepare_session(connection)
            bound = self.idle_bound(connection)
            with connection.cursor() as cursor:
                raw = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
                watch = IdleWatch(bound, raw.connection.pgconn.finish, idle_timeout_error)
                with raw.copy(self.statement, self.params) as copy, watch:
                    read = block_reader(raw.connection, copy)
                    limit = 1
                    while blocks := read(limit):
                        limit = plan.buffer_size
                        watch.away()
                        yield crlf_rows(blocks), len(blocks)
                        watch.back()
