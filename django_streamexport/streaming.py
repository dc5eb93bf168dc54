"""Stream a queryset as encoded bytes chunks; knows nothing about requests.

The pipeline, in order:

1. the format's opening bytes (CSV header row) are yielded *before* the query
   runs, so the client sees the first bytes at once;
2. a transaction is opened and the ``values_list(...)`` rows are read in
   ``fetchmany()`` batches from a server-side cursor
   (:meth:`ExportStream.iter_batches`).  Inside a transaction Django's
   PostgreSQL backend declares a ``WITHOUT HOLD`` server-side cursor, which
   streams; in autocommit it would declare ``WITH HOLD``, which makes
   PostgreSQL run and store the whole result before the first ``FETCH``
   (see the PostgreSQL ``DECLARE`` notes);
3. rows are rendered in batches sized so each yielded chunk is about
   ``buffer_size`` bytes (never one row per chunk);
4. the format's closing bytes follow the last row.

On completion, on an exception and on ``close()`` (a client disconnect: the
server closes the response, which closes this stream) the row iterator is
closed explicitly, which closes the server-side cursor, and the transaction is
rolled back or committed, so no cursor and no open transaction remain.

Failures after the first byte (README "Failures and limits"): the error is
logged with the export id, rows and bytes written and the elapsed time; the
format's :meth:`~ExportFormat.error` bytes are sent (an NDJSON error record;
nothing for CSV); then the exception is re-raised so the server aborts the
chunked transfer and the client never sees a clean end.  The transaction runs
under the :mod:`~django_streamexport.guards` timeouts, and an export with more
than ``max_rows`` rows aborts with :class:`RowLimitExceeded`.  The signals in
:mod:`django_streamexport.signals` are sent when the export starts and ends.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from itertools import chain, islice, repeat
from typing import Any

from django.conf import settings
from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connections, models, transaction

from django_streamexport.columns import ResolvedColumn, sql_positions, values_queryset
from django_streamexport.conf import conf
from django_streamexport.exceptions import RowLimitExceeded
from django_streamexport.failures import DATABASE_ERROR, EXPORT_ERROR, describe_failure
from django_streamexport.formats.base import ExportFormat
from django_streamexport.guards import apply_guards
from django_streamexport.pgfetch import prefetch_available, prefetching_batches
from django_streamexport.pgtext import TextUnavailable, prepare_session, text_select
from django_streamexport.signals import export_finished, export_started

logger = logging.getLogger("django_streamexport")

#: Rows in the first rendered batch: small, so the first data row leaves early.
FIRST_BATCH_ROWS = 16
#: Upper bound on rows rendered per batch, whatever their size.
MAX_BATCH_ROWS = 20_000


def _use_fast_loaders(connection: Any, cursor: Any) -> None:
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


def _reorderer(positions: list[int]) -> Callable[[Sequence[Any]], tuple]:
    """Return a function giving a row's values at ``positions``, in that order."""

    def reorder(row: Sequence[Any]) -> tuple:
        return tuple([row[position] for position in positions])

    return reorder


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

    Limits (``None`` means the setting; 0 means none): ``max_rows``
    (``STREAMEXPORT_MAX_ROWS``), ``statement_timeout`` and
    ``idle_in_transaction_timeout`` in seconds
    (``STREAMEXPORT_STATEMENT_TIMEOUT``,
    ``STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT``; PostgreSQL only).
    ``user`` is passed on to the signals, for auditing; the stream does not
    otherwise use it.

    ``database_formatting`` (``None``: ``STREAMEXPORT_DATABASE_FORMATTING``, on by
    default) lets PostgreSQL spell a CSV export's cells
    (:mod:`django_streamexport.pgtext`) when it can give the same text; Python then only
    quotes them.  ``text_reason`` says why it did not, once the export has started.

    The constructor raises ``ImproperlyConfigured`` for a queryset with
    ``prefetch_related()`` and where :meth:`check_cursor_support` refuses the
    database, so a view fails before its response starts.

    Exceptions from the database or a format propagate unchanged after being
    logged and after the format's error bytes, so that the server aborts the
    transfer (the client sees a truncated response, never a clean end).
    ``outcome`` ends as ``"complete"``, ``"failed"`` (``error_code`` says
    why) or ``"disconnected"``.
    """

    #: On PostgreSQL with psycopg 3, send the next ``FETCH`` before rendering a batch, so
    #: the database computes it meanwhile (:mod:`django_streamexport.pgfetch`).  The
    #: export's connection is then busy between chunks: code that iterates a stream itself
    #: must not query that connection until the iteration ends (servers never do; an
    #: :meth:`iter_rows` or :meth:`iter_batches` override turns prefetching off).
    #: ``False`` reads with Django's chunked cursor and ``fetchmany()``.
    prefetch_batches: bool = True

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
        max_rows: int | None = None,
        statement_timeout: float | None = None,
        idle_in_transaction_timeout: float | None = None,
        user: Any = None,
        database_formatting: bool | None = None,
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
        self.error_code: str | None = None
        self.max_rows = (conf.MAX_ROWS if max_rows is None else max_rows) or None
        self.statement_timeout = (
            conf.STATEMENT_TIMEOUT if statement_timeout is None else statement_timeout
        ) or None
        self.idle_in_transaction_timeout = (
            conf.IDLE_IN_TRANSACTION_TIMEOUT
            if idle_in_transaction_timeout is None
            else idle_in_transaction_timeout
        ) or None
        self.user = user
        self.database_formatting = (
            conf.DATABASE_FORMATTING if database_formatting is None else database_formatting
        )
        self.text_reason: str | None = None
        self._text_select: tuple[str, list[Any]] | None = None
        self._iterator: Iterator[bytes] | None = None
        self._closers: list[Callable[[], None]] = []
        if getattr(queryset, "_prefetch_related_lookups", ()):
            # Caught here, before a view's response starts; the export is one query.
            raise ImproperlyConfigured(
                "An export cannot use prefetch_related(); export related values by lookup "
                '(such as "author__name").'
            )
        self.check_cursor_support()

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("An ExportStream can be iterated only once.")
        self._iterator = self._generate()
        return self._iterator

    def close(self) -> None:
        """Stop the export and release its cursor, transaction and admission slot (idempotent)."""
        try:
            if self._iterator is not None:
                self._iterator.close()  # type: ignore[attr-defined]
        finally:
            # A generator closed before its first step never runs its finally.
            self._run_closers()

    def add_closer(self, closer: Callable[[], None]) -> None:
        """Call ``closer()`` once when the export ends, fails or is closed.

        Views release their admission slot this way.  Also called if the
        stream is garbage-collected without being closed, as a last resort.
        """
        self._closers.append(closer)
        weakref.finalize(self, closer)

    def _run_closers(self) -> None:
        closers, self._closers = self._closers, []
        for closer in closers:
            try:
                closer()
            except Exception:
                logger.exception("Export %s: a closer failed.", self.export_id)

    def apply_guards(self) -> None:
        """Set the export's database timeouts; call inside the export's transaction.

        :meth:`iter_batches` calls it; an override that opens its own
        transaction should call it too.  See :mod:`django_streamexport.guards`.
        """
        apply_guards(
            connections[self.using],
            statement_timeout=self.statement_timeout,
            idle_in_transaction_timeout=self.idle_in_transaction_timeout,
        )

    def check_cursor_support(self) -> None:
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

    def iter_batches(self) -> Iterator[Sequence[tuple]]:
        """Yield the export's rows in batches (sequences of tuples in column order).

        Default: run the ``values_list()`` query of the queryset on a
        server-side cursor inside a transaction (so PostgreSQL declares a
        streaming ``WITHOUT HOLD`` cursor) and yield ``fetchmany()`` batches
        as they come: first :data:`FIRST_BATCH_ROWS` rows, so the first data
        row leaves at once, then ``chunk_size`` rows.  This is what
        ``values_list().iterator(chunk_size=...)`` does, minus its per-row
        generator: Django's ``from_db_value`` converters (JSON fields, SQLite
        decimals and dates) are still applied, per batch.  When :meth:`iter_body`
        chose database formatting, the query is :meth:`get_text_select`'s and
        each cell arrives as the format's text.  Override to read rows another
        way; the generator must release what it holds in ``finally`` (it is
        closed early on a client disconnect).
        """
        connection = connections[self.using]
        converters: Any = None
        composite = False
        col_count = None
        reorder: Callable[[Sequence[Any]], tuple] | None = None
        if self._text_select is not None:
            sql, params = self._text_select
        else:
            queryset = values_queryset(self.queryset, self.columns, self.using)
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
            # Django < 5.2 selects annotations after model fields; put them back in order.
            positions = sql_positions(queryset)
            if positions is not None:
                reorder = _reorderer(positions[: len(self.columns)])
        # As QuerySet.iterator(): no server-side cursor when the settings forbid one.
        chunked = not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        with transaction.atomic(using=self.using):
            self.apply_guards()
            if self._text_select is not None:
                prepare_session(connection)
            prefetch = (
                chunked
                and self.prefetch_batches
                # An override may query between rows: keep the connection free for it.
                and not self._reads_own_rows()
                and prefetch_available(connection)
            )
            chunked_cursor = chunked and not prefetch  # prefetching declares its own
            cursor = connection.chunked_cursor() if chunked_cursor else connection.cursor()
            batches: Iterator[list[tuple]] | None = None
            try:
                _use_fast_loaders(connection, cursor)
                sizes = chain([FIRST_BATCH_ROWS], repeat(self.chunk_size)).__next__
                if prefetch:
                    batches = prefetching_batches(
                        cursor, sql, params, sizes, idle_timeout=self.idle_in_transaction_timeout
                    )
                else:
                    cursor.execute(sql, params)
                    batches = iter(lambda: cursor.fetchmany(sizes()), [])
                for batch in batches:
                    if col_count is not None:
                        batch = [row[:col_count] for row in batch]
                    if composite:
                        batch = list(compiler.results_iter(iter([batch]), tuple_expected=True))
                    elif converters:
                        batch = list(map(tuple, compiler.apply_converters(batch, converters)))
                    if reorder is not None:
                        batch = list(map(reorder, batch))
                    yield batch
            finally:
                if prefetch and batches is not None:
                    batches.close()  # type: ignore[attr-defined]  # takes a FETCH in flight
                cursor.close()  # closes Django's server-side cursor now

    def _reads_own_rows(self) -> bool:
        """Say whether a subclass overrides :meth:`iter_batches` or :meth:`iter_rows`."""
        cls = type(self)
        return (
            cls.iter_batches is not ExportStream.iter_batches
            or cls.iter_rows is not ExportStream.iter_rows
        )

    def get_text_select(self) -> tuple[str, list[Any]] | None:
        """Return the query that has PostgreSQL spell the cells, or ``None`` to format in Python.

        Default: :func:`django_streamexport.pgtext.text_select` when
        ``database_formatting`` is on and rows are read by this class's
        :meth:`iter_batches`; otherwise, or when it cannot spell every column
        (the reason is kept in ``text_reason`` and logged at DEBUG), ``None``.
        """
        if not self.database_formatting:
            self.text_reason = "database_formatting is off"
        elif self._reads_own_rows():
            self.text_reason = f"{type(self).__name__} reads its own rows"
        else:
            try:
                return text_select(self)
            except TextUnavailable as exc:
                self.text_reason = str(exc)
        logger.debug(
            "Export %s: values are formatted in Python: %s.", self.export_id, self.text_reason
        )
        return None

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
        part of it, and it must keep ``rows`` up to date.  Sends exactly
        ``max_rows`` rows and then raises :class:`RowLimitExceeded` when there
        are more.
        """
        self._text_select = self.get_text_select()
        if self._text_select is not None:
            render = self.format.write_rows  # type: ignore[attr-defined]  # CSVFormat
        else:
            render = self.format.render_rows
        buffer_size = self.buffer_size
        limit = self.max_rows
        batches = self._row_batches()
        try:
            slice_rows = FIRST_BATCH_ROWS
            for batch in batches:
                start, size = 0, len(batch)
                while start < size:
                    part = batch[start : start + slice_rows]
                    start += slice_rows
                    over_limit = limit is not None and self.rows + len(part) > limit
                    if over_limit:
                        part = part[: limit - self.rows]  # type: ignore[operator]
                        if not part:
                            raise RowLimitExceeded(limit)  # type: ignore[arg-type]
                    data = render(part)
                    self.rows += len(part)
                    self.bytes += len(data)
                    yield data
                    if over_limit:
                        raise RowLimitExceeded(limit)  # type: ignore[arg-type]
                    # Size the next slice from this one's bytes per row.
                    slice_rows = max(
                        1, min(MAX_BATCH_ROWS, buffer_size * len(part) // max(1, len(data)))
                    )
        finally:
            batches.close()  # type: ignore[attr-defined]

    def signal_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments both export signals carry."""
        return {
            "export_id": self.export_id,
            "user": self.user,
            "model": self.queryset.model,
            "format": self.format.format,
            "fields": [column.name for column in self.columns],
        }

    def _generate(self) -> Iterator[bytes]:
        started = time.monotonic()
        export_format = self.format
        limit = self.max_rows
        self.outcome = "running"
        logger.debug("Export %s started on database %r.", self.export_id, self.using)
        try:
            export_started.send(sender=type(self), **self.signal_kwargs())
            head = export_format.start()
            self.bytes += len(head)
            # Yielded even when empty: the server sends the status line and
            # headers on the first chunk, before the query runs.
            yield head
            for chunk in self.iter_body():
                # A backstop for iter_body() overrides that do not apply the limit.
                if limit is not None and self.rows > limit:
                    raise RowLimitExceeded(limit)
                yield chunk
                # Let other requests run between chunks: under gevent a write that
                # does not block never switches greenlets, so a fast client would
                # otherwise keep the whole worker (and its heartbeat) to itself.
                # time.sleep is gevent.sleep once monkey-patched; elsewhere it
                # releases the GIL.
                time.sleep(0)
            tail = export_format.end(rows=self.rows)
            if tail:
                self.bytes += len(tail)
                yield tail
        except GeneratorExit:
            self.outcome = "disconnected"
            raise
        except Exception as exc:
            self.outcome = "failed"
            failure = describe_failure(exc)
            self.error_code = failure.code
            logger.error(
                "Export %s failed after %d rows, %d bytes, %.3f s (%s): %s",
                self.export_id,
                self.rows,
                self.bytes,
                time.monotonic() - started,
                failure.code,
                exc,
                # A traceback only where it can help: not for limits and timeouts.
                exc_info=failure.code in (DATABASE_ERROR, EXPORT_ERROR),
            )
            error = export_format.error(failure.code, failure.message)
            if error:
                self.bytes += len(error)
                yield error
            # Re-raise, so the server aborts the transfer: a clean end would make
            # the cut file look complete (PEP 3333; streaming-facts 7.1).
            raise
        else:
            self.outcome = "complete"
        finally:
            self.seconds = time.monotonic() - started
            if self.outcome == "running":
                # A BaseException (gevent.Timeout, GreenletExit or SystemExit at a
                # worker's shutdown): the server stopped the export, not the client.
                self.outcome = "interrupted"
            if self.outcome != "failed":
                logger.info(
                    "Export %s %s: %d rows, %d bytes, %.3f s.",
                    self.export_id,
                    self.outcome,
                    self.rows,
                    self.bytes,
                    self.seconds,
                )
            try:
                for receiver, result in export_finished.send_robust(
                    sender=type(self),
                    rows=self.rows,
                    bytes=self.bytes,
                    seconds=self.seconds,
                    outcome=self.outcome,
                    error_code=self.error_code,
                    **self.signal_kwargs(),
                ):
                    if isinstance(result, Exception):
                        logger.error(
                            "Export %s: export_finished receiver %r failed.",
                            self.export_id,
                            receiver,
                            exc_info=result,
                        )
            finally:
                self._run_closers()
