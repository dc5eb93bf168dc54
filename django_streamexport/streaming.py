"""Stream a queryset as encoded bytes chunks; knows nothing about requests.

The pipeline, in order:

1. the format's opening bytes (CSV header row) are yielded *before* the query
   runs, so the client sees the first bytes at once;
2. a transaction is opened and the ``values_list(...)`` rows are read in
   ``fetchmany()`` batches from a server-side cursor (:meth:`ExportStream.iter_batches`).  Inside a transaction
   Django's PostgreSQL backend declares a ``WITHOUT HOLD`` server-side cursor,
   which streams; in autocommit it would declare ``WITH HOLD``, which makes
   PostgreSQL run and store the whole result before the first ``FETCH``
   (see the PostgreSQL ``DECLARE`` notes);
3. rows are rendered in batches sized so each yielded chunk is about
   ``buffer_size`` bytes (never one row per chunk);
4. the format's closing bytes follow the last row.

On completion, on an exception and on ``close()`` (a client disconnect: the
server closes the response, which closes this stream) the row iterator is
closed explicitly, which closes the server-side cursor, and the transaction is
rolled back or committed, so no cursor and no open transaction remain.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from itertools import islice

from django.conf import settings
from django.core.exceptions import EmptyResultSet
from django.db import connections, models, transaction

from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.base import ExportFormat

logger = logging.getLogger("django_streamexport")

#: Rows in the first rendered batch: small, so the first data row leaves early.
FIRST_BATCH_ROWS = 16
#: Upper bound on rows rendered per batch, whatever their size.
MAX_BATCH_ROWS = 20_000


def _use_fast_loaders(connection, cursor) -> None:
    """Let psycopg 3 load ``timestamptz`` with its C loader on this export's cursor.

    Django registers a pure-Python ``timestamptz`` loader on every psycopg 3
    connection (``psycopg_any.BaseTzLoader``) to replace each value's
    ``tzinfo``; for an export it costs more than all other columns together.
    Under ``USE_TZ`` the session time zone is UTC, so psycopg's own loader
    gives the same instants in UTC (the same ``isoformat()``).  Registered on
    this cursor only; the connection keeps Django's loader.  A no-op for
    psycopg2, other databases and ``USE_TZ = False`` (naive values).
    """
    if connection.vendor != "postgresql" or not settings.USE_TZ:
        return
    raw = getattr(cursor, "cursor", None)
    adapters = getattr(raw, "adapters", None)
    if adapters is None:
        return
    if connection.timezone_name != "UTC":
        return
    from psycopg.types.datetime import TimestamptzLoader  # psycopg 3: has adapters

    adapters.register_loader("timestamptz", TimestamptzLoader)


def _batched(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    """Yield lists of up to ``size`` rows from ``rows``; close ``rows`` when closed."""
    try:
        while batch := list(islice(rows, size)):
            yield batch
    finally:
        rows.close()  # type: ignore[attr-defined]


class ExportStream:
    """Iterate over an export as ``bytes`` chunks of about ``buffer_size`` bytes.

    ``queryset`` is read on database ``using`` (default: the queryset's own,
    i.e. the routers' ``db_for_read``), ``chunk_size`` rows per fetch, the
    values of ``columns``' lookups, rendered by ``export_format``.

    The object is iterable once.  Counters ``rows`` and ``bytes`` (and
    ``seconds`` once finished) describe what was sent; ``export_id`` names the
    export in log lines.  ``close()`` stops the export and releases the
    cursor; ``StreamingHttpResponse`` calls it when the response is closed.

    Exceptions from the database or a format propagate unchanged after being
    logged, so that the server aborts the transfer (the client sees a
    truncated response, never a clean end).
    """

    def __init__(
        self,
        queryset: models.QuerySet,
        columns: Sequence[ResolvedColumn],
        export_format: ExportFormat,
        *,
        chunk_size: int,
        buffer_size: int,
        using: str | None = None,
        export_id: str | None = None,
    ) -> None:
        self.queryset = queryset
        self.columns = list(columns)
        self.format = export_format
        self.chunk_size = chunk_size
        self.buffer_size = buffer_size
        self.using = using or queryset.db
        self.export_id = export_id or uuid.uuid4().hex[:12]
        self.rows = 0
        self.bytes = 0
        self.seconds: float | None = None
        self.outcome: str | None = None
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("An ExportStream can be iterated only once.")
        self._iterator = self._generate()
        return self._iterator

    def close(self) -> None:
        """Stop the export and release its cursor and transaction (idempotent)."""
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]

    def iter_batches(self) -> Iterator[Sequence[tuple]]:
        """Yield the export's rows in batches (sequences of tuples in column order).

        Default: run the ``values_list()`` query of the queryset on a
        server-side cursor inside a transaction (so PostgreSQL declares a
        streaming ``WITHOUT HOLD`` cursor) and yield ``fetchmany()`` batches
        as they come: first :data:`FIRST_BATCH_ROWS` rows, so the first data
        row leaves at once, then ``chunk_size`` rows.  This is what
        ``values_list().iterator(chunk_size=...)`` does, minus its per-row
        generator: Django's ``from_db_value`` converters (JSON fields, SQLite
        decimals and dates) are still applied, per batch.  Override to read
        rows another way; the generator must release what it holds in
        ``finally`` (it is closed early on a client disconnect).
        """
        connection = connections[self.using]
        queryset = self.queryset.using(self.using).values_list(
            *(column.lookup for column in self.columns)
        )
        if queryset._prefetch_related_lookups:
            raise ValueError("An export cannot use prefetch_related(); use values lookups.")
        compiler = queryset.query.get_compiler(using=self.using)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:
            return
        # As SQLCompiler.results_iter(): converters of the selected columns, extra
        # ordering columns cut off.
        fields = [s[0] for s in compiler.select[0 : compiler.col_count]]
        converters = compiler.get_converters(fields)
        has_composite = getattr(compiler, "has_composite_fields", None)  # Django 5.2+
        composite = has_composite is not None and has_composite(fields)
        col_count = compiler.col_count if compiler.has_extra_select else None
        # As QuerySet.iterator(): no server-side cursor when the settings forbid one.
        chunked = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        with transaction.atomic(using=self.using):
            cursor = connection.chunked_cursor() if chunked else connection.cursor()
            try:
                _use_fast_loaders(connection, cursor)
                cursor.execute(sql, params)
                size = FIRST_BATCH_ROWS
                while batch := cursor.fetchmany(size):
                    size = self.chunk_size
                    if col_count is not None:
                        batch = [row[:col_count] for row in batch]
                    if composite:
                        batch = list(compiler.results_iter(iter([batch]), tuple_expected=True))
                    elif converters:
                        batch = list(map(tuple, compiler.apply_converters(batch, converters)))
                    yield batch
            finally:
                cursor.close()  # closes the server-side cursor now

    def iter_rows(self) -> Iterator[tuple]:
        """Yield the export's rows as tuples in column order, inside a transaction.

        Default: the rows of :meth:`iter_batches`.  Override to read rows one
        by one another way (:meth:`iter_body` then batches them itself); the
        generator must release what it holds in ``finally``.
        """
        batches = self.iter_batches()
        try:
            for batch in batches:
                yield from batch
        finally:
            batches.close()  # type: ignore[attr-defined]

    def _row_batches(self) -> Iterator[Sequence[tuple]]:
        """Return :meth:`iter_batches`, or batches of :meth:`iter_rows` if only it is overridden."""
        cls = type(self)
        rows_overridden = cls.iter_rows is not ExportStream.iter_rows
        if rows_overridden and cls.iter_batches is ExportStream.iter_batches:
            return _batched(self.iter_rows(), self.chunk_size)
        return self.iter_batches()

    def iter_body(self) -> Iterator[bytes]:
        """Yield the encoded rows in chunks of about ``buffer_size`` bytes.

        Reads row batches (:meth:`iter_batches`) and renders slices of them
        with the format, sizing each slice from the last one's bytes per row;
        the first slice is small (:data:`FIRST_BATCH_ROWS`) so the first data
        row leaves at once.  Updates ``rows`` and ``bytes``.  Override to
        produce the body another way (PostgreSQL ``COPY``,
        :mod:`django_streamexport.pgcopy`); the header and footer are not
        part of it.
        """
        render = self.format.render_rows
        buffer_size = self.buffer_size
        batches = self._row_batches()
        try:
            slice_rows = FIRST_BATCH_ROWS
            for batch in batches:
                start, size = 0, len(batch)
                while start < size:
                    part = batch[start : start + slice_rows]
                    start += slice_rows
                    data = render(part)
                    self.rows += len(part)
                    self.bytes += len(data)
                    yield data
                    # Size the next slice from this one's bytes per row.
                    slice_rows = max(
                        1, min(MAX_BATCH_ROWS, buffer_size * len(part) // max(1, len(data)))
                    )
        finally:
            batches.close()  # type: ignore[attr-defined]

    def _generate(self) -> Iterator[bytes]:
        started = time.monotonic()
        export_format = self.format
        self.outcome = "running"
        logger.debug("Export %s started on database %r.", self.export_id, self.using)
        try:
            head = export_format.start()
            if head:
                self.bytes += len(head)
                yield head
            yield from self.iter_body()
            tail = export_format.end()
            if tail:
                self.bytes += len(tail)
                yield tail
        except GeneratorExit:
            self.outcome = "disconnected"
            raise
        except Exception:
            self.outcome = "failed"
            logger.exception(
                "Export %s failed after %d rows, %d bytes, %.3f s.",
                self.export_id,
                self.rows,
                self.bytes,
                time.monotonic() - started,
            )
            raise
        else:
            self.outcome = "complete"
        finally:
            self.seconds = time.monotonic() - started
            if self.outcome != "failed":
                logger.info(
                    "Export %s %s: %d rows, %d bytes, %.3f s.",
                    self.export_id,
                    self.outcome,
                    self.rows,
                    self.bytes,
                    self.seconds,
                )
