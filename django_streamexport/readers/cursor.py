"""Read rows from one server-side cursor inside a transaction, optionally prefetching.

Inside a transaction Django's PostgreSQL backend declares a ``WITHOUT HOLD`` cursor,
which streams: in autocommit it would declare ``WITH HOLD``, and PostgreSQL would run and
store the whole result before the first ``FETCH`` (PostgreSQL docs, ``DECLARE``, Notes:
"the rows represented by a held cursor are copied into a temporary file or memory area").
SQLite fetches in batches from an ordinary cursor (Django's ``QuerySet.iterator()`` docs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

from django_streamexport.postgresql.driver import psycopg_internals, use_fast_loaders
from django_streamexport.postgresql.prefetch import FetchedRows, prefetching_batches
from django_streamexport.postgresql.text import prepare_session
from django_streamexport.readers.base import FIRST_BATCH_ROWS, Reader

if TYPE_CHECKING:
    from django_streamexport.columns import CompiledQuery
    from django_streamexport.plan import ExportPlan

__all__ = ["CursorReader", "PrefetchingCursorReader"]


class CursorReader(Reader):
    """Run the export's query on a server-side cursor in a transaction; yield its batches.

    The first fetch is :data:`~django_streamexport.readers.base.FIRST_BATCH_ROWS` rows,
    then ``plan.chunk_size`` rows per ``fetchmany()``.  The transaction carries the
    export's guards (:func:`~django_streamexport.postgresql.guards.apply_guards`).  With
    ``text_select`` (SQL and parameters from
    :func:`~django_streamexport.postgresql.text.text_select`) the cursor reads each
    cell's text; otherwise the rows of ``query`` are finished as ``QuerySet.iterator()``
    would (Django's converters, per batch rather than per row).
    """

    name = "cursor"

    def __init__(
        self,
        plan: ExportPlan,
        query: CompiledQuery,
        *,
        text_select: tuple[str, Sequence[Any]] | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(plan, reason=reason)
        self.query = query
        self.text_select = text_select
        self.text_cells = text_select is not None

    def first_select(self) -> tuple[str, Sequence[Any]] | None:
        """Return the export's query (``None`` when Django knows it matches nothing).

        With ``text_select`` the cursor runs that query wrapped; the wrapping adds only
        the code's values, the filters' are all in the query.
        """
        if self.query.empty:
            return None
        return self.query.sql, self.query.params

    def open_cursor(self, connection: Any) -> Any:
        """Return the cursor to read with: Django's chunked (server-side) cursor."""
        return connection.chunked_cursor()

    def fetch(
        self, cursor: Any, sql: str, params: Sequence[Any], sizes: Callable[[], int]
    ) -> Iterator[Sequence[tuple]]:
        """Execute ``sql`` on ``cursor``; yield ``fetchmany(sizes())`` batches until empty."""
        cursor.execute(sql, params)
        while batch := cursor.fetchmany(sizes()):
            yield batch

    def read(self) -> Iterator[Sequence[tuple]]:
        plan, query = self.plan, self.query
        if self.text_select is not None:
            sql, params = self.text_select
        elif query.empty:
            return
        else:
            sql, params = query.sql, query.params
        finish = query.finish if not self.text_cells and query.needs_finishing else None
        connection = connections[plan.using]
        with transaction.atomic(using=plan.using):
            self.apply_guards(connection)
            if self.text_cells:
                prepare_session(connection)
            cursor = self.open_cursor(connection)
            batches = None
            try:
                use_fast_loaders(connection, cursor)
                sizes = chain([FIRST_BATCH_ROWS], repeat(plan.chunk_size)).__next__
                batches = self.fetch(cursor, sql, params, sizes)
                for batch in batches:
                    if finish is None:
                        yield batch
                    elif isinstance(batch, FetchedRows):
                        yield batch.then(finish)  # finished slice by slice, as loaded
                    else:
                        yield finish(batch if isinstance(batch, list) else list(batch))
            finally:
                if batches is not None:
                    batches.close()  # type: ignore[attr-defined]  # takes a FETCH in flight
                cursor.close()  # closes the server-side cursor now


class PrefetchingCursorReader(CursorReader):
    """A :class:`CursorReader` whose next ``FETCH`` runs while a batch is rendered.

    PostgreSQL with psycopg 3 only (:mod:`django_streamexport.postgresql.prefetch`).  The
    export's connection is busy between batches: code that iterates a stream itself
    must not query that connection until the iteration ends (servers never do).  A
    ``FETCH`` runs while the consumer has a batch, so the reader holds the idle bound
    itself (:meth:`~django_streamexport.readers.base.Reader.idle_bound`; see
    :func:`~django_streamexport.postgresql.prefetch.prefetching_batches`).
    """

    name = "prefetching cursor"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The driver's pieces as they were when this reader was chosen.
        self.driver = psycopg_internals()

    def open_cursor(self, connection: Any) -> Any:
        """Return a plain cursor: the prefetching code declares its own server-side cursor."""
        return connection.cursor()

    def fetch(
        self, cursor: Any, sql: str, params: Sequence[Any], sizes: Callable[[], int]
    ) -> Iterator[Sequence[tuple]]:
        """Yield :class:`~django_streamexport.postgresql.prefetch.FetchedRows` batches, whose
        rows are loaded as the stream slices them, each ``FETCH`` sent before the last
        batch is handed over."""
        return prefetching_batches(
            cursor,
            sql,
            params,
            sizes,
            idle_timeout=self.idle_bound(cursor.db),
            driver=self.driver,
        )
