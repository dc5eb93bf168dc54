"""Read a CSV export's body from PostgreSQL ``COPY ... TO STDOUT`` (the default for CSV)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

from django_streamexport.failures import sqlstate
from django_streamexport.postgresql.copy import block_reader, crlf_rows
from django_streamexport.postgresql.guards import (
    IdleWatch,
    apply_guards,
    idle_timeout_error,
    session_timeout,
    statement_timeout_error,
)
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
    it leaves at once.  Closing early (a client disconnect) leaves the COPY, which rolls
    the transaction back.

    COPY is one statement that runs as long as the export, so the timeouts are held by an
    :class:`~django_streamexport.postgresql.guards.IdleWatch` rather than by PostgreSQL:
    the statement timeout (the plan's, else the session's ``statement_timeout``, which
    the transaction then turns off) bounds each wait for the next chunk (the first
    includes sorting), as it bounds each ``FETCH`` of a cursor export, and the idle bound
    how long the consumer keeps a chunk.  With ``plan.max_rows`` the statement reads one
    row more (``LIMIT max_rows + 1``); exactly ``max_rows`` rows are yielded, and
    ``over_limit`` is set when the extra row came.
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
        #: The seconds each wait for rows may last (``None``: no bound); set by :meth:`read`.
        self.statement_bound: float | None = None

    def first_select(self) -> tuple[str, Sequence[Any]] | None:
        """Return the export's query, which COPY writes out (when it was given).

        The query the statement wraps holds every value of the filters; the wrapping
        (:func:`~django_streamexport.postgresql.text.text_select`) adds only the code's.
        """
        if self.query is None or self.query.empty:
            return None
        return self.query.sql, self.query.params

    def apply_guards(self, connection: Any) -> None:
        """Set the idle timeout; hold the statement timeout in the reader, per wait for rows.

        The plan's ``statement_timeout``, else the session's (one round trip), becomes
        :attr:`statement_bound`, and ``SET LOCAL statement_timeout = 0`` keeps PostgreSQL
        from bounding the whole COPY with it.
        """
        plan = self.plan
        self.statement_bound = plan.statement_timeout or session_timeout(
            connection, "statement_timeout"
        )
        apply_guards(
            connection,
            statement_timeout=None,
            idle_in_transaction_timeout=plan.idle_in_transaction_timeout,
        )
        if self.statement_bound:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = 0")

    def read(self) -> Iterator[tuple[bytes, int]]:
        plan = self.plan
        left = plan.max_rows  # rows that may still be sent; None: no limit
        connection = connections[plan.using]
        with transaction.atomic(using=plan.using):
            self.apply_guards(connection)
            prepare_session(connection)
            bound = self.idle_bound(connection)
            with connection.cursor() as cursor:
                raw = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
                watch = IdleWatch(
                    bound,
                    raw.connection.pgconn.finish,
                    idle_timeout_error,
                    busy_seconds=self.statement_bound,
                    cancel=raw.connection.cancel,
                )
                # Errors as Django's: the reads', and ending the COPY's when the session is
                # gone (psycopg 3.1 raises "the connection is lost" from Copy.__exit__).
                with (
                    connection.wrap_database_errors,
                    watch,
                    raw.copy(self.statement, self.params) as copy,
                ):
                    try:
                        read = block_reader(raw.connection, copy)
                        limit = 1
                        while (rows := self._read(read, limit, watch))[1]:
                            data, ends = rows
                            limit = plan.buffer_size
                            if left is not None:
                                if len(ends) > left:
                                    ends = ends[:left]
                                    del data[ends[-1] if ends else 0 :]
                                    self.over_limit = True
                                left -= len(ends)
                                if not ends:
                                    continue  # read on to the end of the COPY
                            watch.away()
                            yield crlf_rows(data, ends), len(ends)
                            watch.back()
                    finally:
                        watch.stop()  # the COPY's own ending (a drain, a cancel) is not bounded

    @staticmethod
    def _read(
        read: Callable[[int], tuple[bytearray, list[int]]], limit: int, watch: IdleWatch
    ) -> tuple[bytearray, list[int]]:
        """Return ``read(limit)``; raise a cancel by ``watch`` as a statement timeout (the
        cursor path raises the same).  :meth:`read` raises errors as Django's."""
        try:
            return read(limit)
        except Exception as exc:
            if watch.cancelled is not None and sqlstate(exc) == "57014":
                raise statement_timeout_error(watch.cancelled) from exc
            raise
