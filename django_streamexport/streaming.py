"""Stream a queryset as encoded bytes chunks; knows nothing about requests.

The pipeline, in order:

1. the format's opening bytes (CSV header row) are yielded *before* the query
   runs, so the client sees the first bytes at once;
2. a transaction is opened and the rows are read with
   ``values_list(...).iterator(chunk_size=...)``.  Inside a transaction
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

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models, transaction

from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.base import ExportFormat

logger = logging.getLogger("django_streamexport")

#: Rows in the first rendered batch: small, so the first data row leaves early.
FIRST_BATCH_ROWS = 16
#: Upper bound on rows rendered per batch, whatever their size.
MAX_BATCH_ROWS = 20_000


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
        self.check_database()

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("An ExportStream can be iterated only once.")
        self._iterator = self._generate()
        return self._iterator

    def close(self) -> None:
        """Stop the export and release its cursor and transaction (idempotent)."""
        if self._iterator is not None:
            self._iterator.close()  # type: ignore[attr-defined]

    def check_database(self) -> None:
        """Refuse a database on which :meth:`iter_rows` would not stream.

        Raises ``ImproperlyConfigured`` for a PostgreSQL alias with
        ``DISABLE_SERVER_SIDE_CURSORS`` (PgBouncer in transaction pooling):
        ``iterator()`` would then fetch the whole result into memory at the
        first query (Django's ``QuerySet.iterator()`` docs).  Called by
        ``__init__``, so views fail before the response starts.
        """
        connection = connections[self.using]
        if connection.vendor == "postgresql" and connection.settings_dict.get(
            "DISABLE_SERVER_SIDE_CURSORS"
        ):
            raise ImproperlyConfigured(
                f"DATABASES[{self.using!r}] sets DISABLE_SERVER_SIDE_CURSORS, so a cursor export "
                "would load every row into memory. Use keyset pagination (export_mode = "
                '"keyset" on the view, or django_streamexport.keyset.KeysetExportStream), or '
                "export from an alias that connects without a transaction-mode pooler."
            )

    def iter_rows(self) -> Iterator[tuple]:
        """Yield the export's rows as tuples in column order, inside a transaction.

        Override to read rows another way; the generator must release what it
        holds in ``finally`` (it is closed early on a client disconnect).
        """
        lookups = [column.lookup for column in self.columns]
        with transaction.atomic(using=self.using):
            rows = (
                self.queryset.using(self.using)
                .values_list(*lookups)
                .iterator(chunk_size=self.chunk_size)
            )
            try:
                yield from rows
            finally:
                rows.close()  # closes the server-side cursor now

    def iter_body(self) -> Iterator[bytes]:
        """Yield the encoded rows in chunks of about ``buffer_size`` bytes.

        Reads :meth:`iter_rows` and renders batches with the format, sizing
        each batch from the last one's bytes per row.  Updates ``rows`` and
        ``bytes``.  Override to produce the body another way (PostgreSQL
        ``COPY``); the header and footer are not part of it.
        """
        export_format = self.format
        rows = self.iter_rows()
        try:
            batch_rows = FIRST_BATCH_ROWS
            while batch := list(islice(rows, batch_rows)):
                data = export_format.render_rows(batch)
                self.rows += len(batch)
                self.bytes += len(data)
                yield data
                # Size the next batch from this one's bytes per row.
                batch_rows = max(
                    1, min(MAX_BATCH_ROWS, self.buffer_size * len(batch) // max(1, len(data)))
                )
        finally:
            rows.close()  # type: ignore[attr-defined]

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
