"""The base class of export formats, and the value converters they share.

A format is identified by class attributes (``format``, ``media_type``,
``extension``, ``charset``), like a DRF renderer, but it renders a stream in
three small steps instead of one whole-file ``render()``:

* :meth:`ExportFormat.start` returns the bytes before the first row (a CSV
  header row); the pipeline sends them before the query runs;
* :meth:`ExportFormat.render_rows` turns a batch of database rows into bytes;
* :meth:`ExportFormat.end` returns the bytes after the last row, knowing how
  many rows were written;
* :meth:`ExportFormat.error` returns the bytes sent when the export fails
  after its first byte, just before the transfer is aborted.

Values arrive as the database driver returns them for ``values_list()``.
Each column gets a converter chosen by its kind (see
:mod:`django_streamexport.columns`), or none when the raw value is already
what the format writes; ``None`` never reaches a converter.  A batch of rows
is converted column by column: each converter is wrapped in a *batch
converter* (a whole column of values -> a list of converted values), and the
common converters have hand-written batch forms
(:attr:`ExportFormat.batch_converters`) that do the per-value work inline,
which costs far less than a Python function call per value.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, ClassVar

from django.conf import settings
from django.utils import timezone
from django.utils.duration import duration_iso_string

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn

Converter = Callable[[Any], Any]
#: A column of a batch (``None`` included) -> a list of as many converted values.
BatchConverter = Callable[[Sequence[Any]], list[Any]]
Row = Sequence[Any]


def decimal_text(value: Decimal) -> str:
    """Return a ``Decimal`` as exact positional text (``"-0.50"``, never ``"5E-1"``)."""
    return format(value, "f")


def datetime_text(value: datetime.datetime) -> str:
    """Return a datetime as ISO 8601 with an explicit UTC offset.

    Aware values keep the offset the database gave them (UTC under
    ``USE_TZ = True``); naive values (``USE_TZ = False``) are read in the
    default time zone (``TIME_ZONE``) first.
    """
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.isoformat()


def zoned_datetime_text(zone: datetime.tzinfo) -> Converter:
    """Return the converter of a datetime to ISO 8601 text in ``zone``, with its offset there.

    ``2013-01-01T05:30:15.123+00:00`` in Europe/Berlin is
    ``2013-01-01T06:30:15.123000+01:00``: ``isoformat()``, so microseconds only when
    non-zero and the offset's seconds only when non-zero (local mean time before 1893 in
    Berlin: ``+00:53:28``).  A naive value (``USE_TZ = False``) is read in the default time
    zone first, as :func:`datetime_text` does.  A value whose local time would fall
    outside Python's years 1 to 9999 (within a day of either end) is written in UTC,
    still naming the same instant.
    """
    default = timezone.get_default_timezone()
    utc = datetime.timezone.utc

    def convert(value: datetime.datetime) -> str:
        if value.tzinfo is None:
            value = timezone.make_aware(value, default)
        try:
            return value.astimezone(zone).isoformat()
        except OverflowError:
            try:
                return value.astimezone(utc).isoformat()
            except OverflowError:
                return value.isoformat()

    return convert


def decimal_texts(values: Sequence[Decimal | None]) -> list[str | None]:
    """Return :func:`decimal_text` of each value of a column, ``None`` kept."""
    return [None if value is None else format(value, "f") for value in values]


def batch_converter(convert: Converter) -> BatchConverter:
    """Return a batch converter applying ``convert`` to each non-null value of a column."""

    def convert_batch(values: Sequence[Any]) -> list[Any]:
        # map() is the cheapest per value when the column has no NULL.
        if None in values:
            return [None if value is None else convert(value) for value in values]
        return list(map(convert, values))

    return convert_batch


def binary_text(value: bytes | memoryview) -> str:
    """Return binary data as standard base64 text (RFC 4648 section 4)."""
    return base64.b64encode(bytes(value)).decode("ascii")


def choices_converter(choices: dict[Any, str]) -> Converter:
    """Return a converter from a stored choice value to its display label.

    Values missing from the choices are written as stored, as
    ``get_FOO_display()`` does.
    """
    get = choices.get

    def convert(value: Any) -> Any:
        return get(value, value)

    return convert


class OutputBuffer:
    """A write-only, non-seekable binary file that collects what a writer library writes.

    Formats that hand their bytes to a library writer (``zipfile`` for XLSX, pyarrow's
    ``ParquetWriter``) give it this file and :meth:`drain` it after each batch, so each
    chunk leaves as soon as it is written.  It has no ``tell()`` or ``seek()``: ``zipfile``
    then writes data descriptors; ``closed`` and ``write()`` are what pyarrow reads.
    """

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        """Keep ``data`` (``bytes``, or a buffer, copied) until the next :meth:`drain`."""
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Do nothing: bytes leave with :meth:`drain`."""

    def drain(self) -> bytes:
        """Return the bytes written since the last drain, and forget them."""
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class ExportFormat:
    """Render rows of a fixed set of columns as a stream of bytes.

    Subclasses set the identity attributes and implement :meth:`render_rows`;
    they extend :meth:`get_converter` to change how a kind of value is written.
    """

    #: Converter -> its batch form, for the converters :meth:`get_converter`
    #: returns most; each must give the same values as the converter applied
    #: to the non-null values of the column.
    batch_converters: ClassVar[dict[Converter, BatchConverter]] = {decimal_text: decimal_texts}

    #: The value of the ``format`` query parameter that selects this format.
    format: ClassVar[str] = ""
    #: The media type, without parameters (``"text/csv"``).
    media_type: ClassVar[str] = ""
    #: The file name extension, without the dot.
    extension: ClassVar[str] = ""
    #: The encoding of every byte this format produces.
    charset: ClassVar[str] = "utf-8"
    #: ``render_rows(a) + render_rows(b) == render_rows(a + b)`` (and the same for
    #: :meth:`render_text_rows`): the stream may then render a slice of rows in parts,
    #: letting other requests run in between, when the slice would take longer than the
    #: export's ``time_slice``.  Default False (a compressing writer may flush at each
    #: call); True for CSV, NDJSON and the JSON array.  A subclass whose
    #: :meth:`render_rows` writes something per batch sets it back to False.
    independent_rows: ClassVar[bool] = False
    #: What the export is called (the model's ``verbose_name_plural``): set by
    #: :func:`~django_streamexport.plan.build_plan` when empty; XLSX names its sheet after it.
    title: str = ""
    #: The zone aware datetimes are written in; ``None``: as the database returns them (UTC
    #: under ``USE_TZ``).  Set by :meth:`set_time_zone`, from the plan's ``time_zone``.
    time_zone: datetime.tzinfo | None = None

    def __init__(self, columns: Sequence[ResolvedColumn]) -> None:
        self.columns = list(columns)
        self._active = self._active_converters()

    def _active_converters(self) -> list[tuple[int, BatchConverter]]:
        # (index, batch converter) for the columns that need one: the hot loop skips the rest.
        return [
            (index, convert)
            for index, column in enumerate(self.columns)
            if (convert := self.get_batch_converter(column)) is not None
        ]

    def set_time_zone(self, zone: datetime.tzinfo | None) -> None:
        """Write aware datetimes in ``zone`` (``None``: as the database returns them).

        Called by :func:`~django_streamexport.plan.build_plan` with the export's time zone
        (``time_zone``, ``STREAMEXPORT_TIME_ZONE``) before the first row.  Text formats
        (CSV, NDJSON, JSON) then write ISO 8601 with the zone's offset
        (:func:`zoned_datetime_text`); XLSX writes the wall time in it unless its own
        ``time_zone`` option or ``STREAMEXPORT_XLSX_TIME_ZONE`` is set; Parquet keeps
        UTC timestamps, which carry the instant.
        """
        self.time_zone = zone
        self._active = self._active_converters()

    @property
    def content_type(self) -> str:
        """Return the ``Content-Type`` header value, with the charset (none for binary formats)."""
        return f"{self.media_type}; charset={self.charset}" if self.charset else self.media_type

    def rendered_size(self, data: bytes) -> int:
        """Return the size of the last rendered batch, which sizes the next one. Default: its bytes.

        A format whose output is compressed returns the uncompressed size, so slices stay
        about ``buffer_size`` bytes of rows however much the compressor holds back.
        """
        return len(data)

    def get_converter(self, column: ResolvedColumn) -> Converter | None:
        """Return the converter for ``column``'s values, or ``None`` to write them as read.

        The default handles choices display and the kinds whose driver values
        no format can write as they are (decimals, durations, binary data,
        naive datetimes), and datetimes when the export has a :attr:`time_zone`.
        """
        if column.choices is not None:
            return choices_converter(dict(column.choices))
        if column.kind == kinds.DECIMAL:
            return decimal_text
        if column.kind == kinds.DURATION:
            return duration_iso_string
        if column.kind == kinds.BINARY:
            return binary_text
        if column.kind == kinds.DATETIME and self.time_zone is not None:
            return zoned_datetime_text(self.time_zone)
        if column.kind == kinds.DATETIME and not settings.USE_TZ:
            return datetime_text
        return None

    def get_batch_converter(self, column: ResolvedColumn) -> BatchConverter | None:
        """Return the batch converter for ``column`` (a column of values -> a list), or ``None``.

        Default: :meth:`get_converter`'s converter in its batch form from
        :attr:`batch_converters`, else wrapped by
        :func:`~django_streamexport.formats.base.batch_converter`.
        Override :meth:`get_converter` to change what is written, and this
        only to make a converter of your own cheaper on large exports.
        """
        convert = self.get_converter(column)
        if convert is None:
            return None
        try:
            fast = self.batch_converters.get(convert)
        except TypeError:  # an unhashable callable
            fast = None
        return fast or batch_converter(convert)

    def convert_rows(self, rows: Sequence[Row]) -> Sequence[Row]:
        """Return ``rows`` with each column's converter applied to its non-null values.

        Rows without an active converter are returned as they are (no copy).
        Otherwise the batch is converted column by column (``zip(*rows)``,
        then one batch converter per converted column), which costs far less
        per value than rebuilding every row in a Python loop.
        """
        active = self._active
        if not active or not rows:
            return rows
        columns: list[Sequence[Any]] = list(zip(*rows))  # noqa: B905 (equal lengths)
        for index, convert in active:
            columns[index] = convert(columns[index])
        return list(zip(*columns))  # noqa: B905

    def database_text_refusal(self) -> str | None:
        """Return why PostgreSQL cannot spell this format's cells, or ``None`` when it can.

        Database formatting and COPY mode (:mod:`django_streamexport.postgresql.text`)
        fetch each cell as the text this format would write, and then render rows with
        :meth:`render_text_rows`.  Default: a reason; CSV (every cell as text) and XLSX
        (the cells :meth:`~django_streamexport.formats.xlsx.XLSXFormat.database_cells`
        names, as XML) return ``None``.
        """
        return f"the format is {self.format!r}, not CSV"

    def render_text_rows(self, rows: Sequence[Row]) -> bytes:
        """Return the bytes for rows read with PostgreSQL's spelling of their cells.

        CSV: every value is already the cell's text (or ``None``); XLSX: the columns it
        names hold their cells' XML, the others their values.  Only called when
        :meth:`database_text_refusal` returned ``None``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot render text cells.")

    def close(self) -> None:
        """Release what the format holds; called once when the export ends, however it ends.

        After :meth:`end` it has nothing left to do; after a failure or a client disconnect
        it drops what was not sent (an XLSX or Parquet writer).  Default: nothing.
        """

    def start(self) -> bytes:
        """Return the bytes that precede the first row. Default: none."""
        return b""

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Return the encoded bytes for a batch of rows (tuples in column order)."""
        raise NotImplementedError("ExportFormat subclasses must implement render_rows().")

    def end(self, rows: int | None = None) -> bytes:
        """Return the bytes after the last row; ``rows`` data rows were written. Default: none.

        Called only when the export completes; the stream passes ``rows`` by keyword.
        """
        return b""

    def error(self, code: str, message: str) -> bytes:
        """Return the bytes that tell the reader the export failed. Default: none.

        ``code`` is one of :mod:`django_streamexport.failures`' codes
        (``"row_limit"``, ``"statement_timeout"``...), ``message`` a short
        sentence without internals.  Called at most once, after the last
        rows; the transfer is aborted right after these bytes whatever they
        are, so a format with no place for an error (CSV) returns nothing.
        """
        return b""
