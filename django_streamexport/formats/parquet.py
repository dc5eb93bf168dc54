"""Apache Parquet, streamed: row groups written as rows arrive, the footer at the end.

A Parquet file is ``PAR1``, then row groups (each column's values of a run of rows,
compressed page by page), then the footer (the schema and where every column chunk
sits), its length and ``PAR1`` again (Apache Parquet format specification, "File
Format").  Readers start from the footer, so a file is readable only once complete:
a cut download (an export that failed, a dropped connection) never opens as a shorter
file.

The file is written by pyarrow's :class:`pyarrow.parquet.ParquetWriter` into a
non-seekable in-memory sink that is drained after each write, so each row group leaves
as soon as it is written: no seek, no temporary file.  pyarrow wraps a Python file
object in ``pyarrow.PythonFile``; for writing it reads ``closed`` and calls ``write()``
with ``bytes``, and counts the position itself (no ``tell()``, ``seek()``, ``flush()``
or ``close()`` is called on the sink, checked with pyarrow 18 and 26).

Memory: rows are converted to Arrow arrays slice by slice (so the driver's rows are
released at once) and buffered until they make a row group (``row_group_rows`` rows or
``row_group_bytes`` bytes of Arrow data, whichever comes first), which is written and
freed.  An export holds at most one row group of Arrow data (plus one slice), the
writer's encoded pages of that group, and the compressed bytes of the group being sent,
whatever its row count.  Arrow memory comes from pyarrow's system memory pool
(``malloc``), or the ``memory_pool`` option: pyarrow's default pool (mimalloc or
jemalloc) keeps freed pages for reuse, and a gunicorn worker's RSS then grew about 27 MB
instead of 17 MB for a 1M-row export (docs/performance.md, "Memory").

This module needs pyarrow: :func:`~django_streamexport.formats.default_format_classes`
imports it only when pyarrow is installed (the ``parquet`` extra); check
``django_streamexport.I001`` says when it is not.  pyarrow itself is imported at the first
Parquet export, or by :func:`preload` (deploy/gunicorn.conf.py calls it in each worker).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn
from django_streamexport.conf import conf
from django_streamexport.formats.base import (
    Converter,
    ExportFormat,
    OutputBuffer,
    Row,
    decimal_text,
)
from django_streamexport.formats.csv import json_text, other_text

if importlib.util.find_spec("pyarrow") is None:  # found, not imported (check E004)
    raise ImportError('Parquet exports need pyarrow: pip install "django-streamexport[parquet]".')

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq
else:

    class _LazyModule:
        """A module imported at its first attribute: pyarrow costs ~30 MB of RSS per
        process, which a project offering Parquet pays only once a Parquet export runs."""

        def __init__(self, name: str) -> None:
            self._name = name

        def __getattr__(self, attribute: str) -> Any:
            return getattr(importlib.import_module(self._name), attribute)

    pa = _LazyModule("pyarrow")
    pq = _LazyModule("pyarrow.parquet")

__all__ = ["CODECS", "ParquetFormat", "arrow_type", "default_compression", "preload"]

#: Compression codecs of the Parquet format that pyarrow writes (``"none"``: uncompressed).
CODECS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")


def default_compression() -> str:
    """Return ``"zstd"`` (Zstandard, in every pyarrow wheel on PyPI), else ``"snappy"``,
    pyarrow's own default, for a pyarrow built without Zstandard."""
    return "zstd" if pa.Codec.is_available("zstd") else "snappy"


#: Largest precision of ``decimal128``; ``decimal256`` goes to 76 digits (Arrow's types).
DECIMAL128_MAX_PRECISION = 38
DECIMAL256_MAX_PRECISION = 76


def _decimal_digits(column: ResolvedColumn) -> tuple[int | None, int | None]:
    """Return the ``max_digits`` and ``decimal_places`` of ``column``'s field, if it has them."""
    field: Any = column.model_field
    while field is not None and getattr(field, "is_relation", False):
        field = getattr(field, "target_field", None)  # a foreign key: the field it points to
    return getattr(field, "max_digits", None), getattr(field, "decimal_places", None)


def arrow_type(column: ResolvedColumn) -> pa.DataType:
    """Return the Arrow type of ``column``'s values in a Parquet file.

    ========================  =========================================================
    kind                      Arrow type (Parquet physical type, logical type)
    ========================  =========================================================
    integer                   ``int64`` (INT64)
    float                     ``float64`` (DOUBLE)
    decimal                   ``decimal128(max_digits, decimal_places)`` up to 38 digits,
                              ``decimal256`` up to 76 (FIXED_LEN_BYTE_ARRAY, DECIMAL);
                              ``string``, the exact text, without them or beyond 76
    boolean                   ``bool`` (BOOLEAN)
    datetime                  ``timestamp("us", tz="UTC")`` (INT64, TIMESTAMP with
                              isAdjustedToUTC=true) under ``USE_TZ``; else
                              ``timestamp("us")`` (isAdjustedToUTC=false: wall time)
    date                      ``date32`` (INT32, DATE)
    time                      ``time64("us")`` (INT64, TIME, microseconds)
    duration                  ``duration("us")`` (INT64 microseconds; Parquet has no
                              duration type, pyarrow restores it from the Arrow schema
                              it stores in the footer)
    binary                    ``binary`` (BYTE_ARRAY)
    text, uuid, json, other   ``string`` (BYTE_ARRAY, STRING): UUIDs in their 36-character
                              form, JSON as compact JSON text, choices as their labels
    ========================  =========================================================
    """
    if column.choices is not None:
        return pa.string()
    kind = column.kind
    if kind == kinds.DECIMAL:
        precision, scale = _decimal_digits(column)
        if precision is not None and scale is not None and 0 <= scale <= precision:
            if precision <= DECIMAL128_MAX_PRECISION:
                return pa.decimal128(precision, scale)
            if precision <= DECIMAL256_MAX_PRECISION:
                return pa.decimal256(precision, scale)
        return pa.string()
    if kind == kinds.DATETIME:
        return pa.timestamp("us", tz="UTC") if settings.USE_TZ else pa.timestamp("us")
    simple = {
        kinds.INTEGER: pa.int64(),
        kinds.FLOAT: pa.float64(),
        kinds.BOOLEAN: pa.bool_(),
        kinds.DATE: pa.date32(),
        kinds.TIME: pa.time64("us"),
        kinds.DURATION: pa.duration("us"),
        kinds.BINARY: pa.binary(),
    }
    return simple.get(kind, pa.string())


def choices_text(choices: dict[Any, str]) -> Converter:
    """Return a converter from a stored choice value to its label (text of the value if none)."""
    get = choices.get

    def convert(value: Any) -> str:
        label = get(value, value)
        return label if isinstance(label, str) else str(label)

    return convert


def preload() -> None:
    """Import pyarrow and write a small Parquet file of every type :func:`arrow_type` returns.

    Call it once per process before the first export (deploy/gunicorn.conf.py's
    ``post_worker_init`` does): the process then already holds what every Parquet export
    would otherwise add to its RSS the first time, pyarrow's modules (about 40 MB with
    pyarrow 26) and the code its writer runs (about 6 MB more), so an export's memory is
    its row group's.  The file (two rows: values, then nulls) is written into nothing, with
    :func:`default_compression` and the system memory pool, as exports are.
    """
    import datetime
    import decimal

    types = {
        pa.int64(): 1,
        pa.float64(): 1.5,
        pa.decimal128(12, 2): decimal.Decimal("1.50"),
        pa.decimal256(40, 2): decimal.Decimal("1.50"),
        pa.bool_(): True,
        pa.timestamp("us", tz="UTC"): datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc),
        pa.timestamp("us"): datetime.datetime(2000, 1, 1),
        pa.date32(): datetime.date(2000, 1, 1),
        pa.time64("us"): datetime.time(12),
        pa.duration("us"): datetime.timedelta(seconds=1),
        pa.binary(): b"x",
        pa.string(): "x",
    }
    pool = pa.system_memory_pool()
    schema = pa.schema([pa.field(f"c{index}", kind) for index, kind in enumerate(types)])
    arrays = [pa.array([value, None], type=kind, memory_pool=pool) for kind, value in types.items()]
    writer = pq.ParquetWriter(
        OutputBuffer(), schema, compression=default_compression(), memory_pool=pool
    )
    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    writer.close()


class ParquetFormat(ExportFormat):
    """Write rows as an Apache Parquet file (``.parquet``), one row group at a time.

    Columns are named after the export fields (the NDJSON keys, ``author__name``), all
    nullable, typed by :func:`arrow_type`.  Values are written as the database returns
    them: decimals exact, datetimes as instants in UTC under ``USE_TZ``.  A value its
    column cannot hold (a ``Sum`` annotation beyond its field's ``max_digits``, a
    ``NaN`` decimal) fails the export with a ``ValueError`` naming the column, mid-stream
    as any failure: the file then has no footer and does not open.

    Options: ``row_group_rows`` (most rows per row group, default
    ``STREAMEXPORT_PARQUET_ROW_GROUP_ROWS``), ``row_group_bytes`` (most bytes of Arrow data
    per row group, default ``STREAMEXPORT_PARQUET_ROW_GROUP_BYTES``; a group is written
    when either is reached, and one group is held in memory), ``compression``
    (one of :data:`CODECS`, default :func:`default_compression`, ``"zstd"``),
    ``compression_level`` (the codec's level; default pyarrow's) and ``memory_pool`` (the
    ``pyarrow.MemoryPool`` the arrays and the writer allocate from; default
    ``pyarrow.system_memory_pool()``, which hands freed row groups back to ``malloc``).
    A pool of your own, such as ``pyarrow.proxy_memory_pool(...)`` to
    measure one export (``max_memory()``), must outlive the format and what it allocated:
    pyarrow frees into it and crashes the process if it is gone.  Invalid options raise
    ``ImproperlyConfigured`` when the format is built, before a response starts.

    :meth:`start` returns ``PAR1`` (sent before the query runs); :meth:`render_rows`
    returns the bytes of the row groups it completed, usually none; :meth:`end` the last
    group and the footer.  The stream sizes its slices by :meth:`rendered_size`, the
    Arrow size of the rows.
    """

    format = "parquet"
    #: Registered with IANA on 2024-02-14.
    media_type = "application/vnd.apache.parquet"
    extension = "parquet"
    charset = ""  # binary: no charset parameter

    def __init__(
        self,
        columns: Sequence[ResolvedColumn],
        *,
        row_group_rows: int | None = None,
        row_group_bytes: int | None = None,
        compression: str | None = None,
        compression_level: int | None = None,
        memory_pool: pa.MemoryPool | None = None,
    ) -> None:
        rows = conf.PARQUET_ROW_GROUP_ROWS if row_group_rows is None else row_group_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ImproperlyConfigured(f"row_group_rows must be a positive integer, not {rows!r}.")
        cap = conf.PARQUET_ROW_GROUP_BYTES if row_group_bytes is None else row_group_bytes
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ImproperlyConfigured(f"row_group_bytes must be a positive integer, not {cap!r}.")
        codec = default_compression() if compression is None else compression
        if not isinstance(codec, str) or codec.lower() not in CODECS:
            raise ImproperlyConfigured(
                f"Parquet compression must be one of {', '.join(CODECS)}, not {codec!r}."
            )
        codec = codec.lower()
        if codec != "none" and not pa.Codec.is_available(codec):
            raise ImproperlyConfigured(f"This pyarrow build cannot compress with {codec!r}.")
        self.row_group_rows = rows
        self.row_group_bytes = cap
        self.compression = codec
        self.compression_level = compression_level
        #: The Arrow memory pool of this export's arrays and writer.
        self.memory_pool = memory_pool or pa.system_memory_pool()
        self._sink = OutputBuffer()
        self._writer: pq.ParquetWriter | None = None
        self._batches: list[pa.RecordBatch] = []
        self._buffered = 0
        self._buffered_bytes = 0
        self._last_size = 0
        super().__init__(columns)
        self.types = [self.arrow_type(column) for column in self.columns]
        #: The file's Arrow schema: one nullable field per column, named after it.
        self.schema = pa.schema(
            [pa.field(c.name, t) for c, t in zip(self.columns, self.types, strict=True)]
        )

    # --- values -------------------------------------------------------------------

    def arrow_type(self, column: ResolvedColumn) -> pa.DataType:
        """Return ``column``'s Arrow type: :func:`arrow_type`'s; override to change it."""
        return arrow_type(column)

    def get_converter(self, column: ResolvedColumn) -> Converter | None:
        """Return the converter to what pyarrow takes for the column's type, or ``None``.

        Choices become labels; UUIDs, JSON and unknown kinds text (JSON and lists as
        compact JSON, as in CSV); decimals text when their column is a string.  Numbers,
        booleans, dates, times, datetimes, durations and binary data (``bytes`` or
        ``memoryview``) are taken as the driver returns them.
        """
        if column.choices is not None:
            return choices_text(dict(column.choices))
        kind = column.kind
        if kind == kinds.DECIMAL:
            return decimal_text if pa.types.is_string(self.arrow_type(column)) else None
        text: dict[str, Converter] = {
            kinds.UUID: str,
            kinds.JSON: json_text,
            kinds.OTHER: other_text,
        }
        return text.get(kind)

    def _arrays(self, rows: Sequence[Row]) -> list[pa.Array]:
        """Return the rows' columns as Arrow arrays of the schema's types."""
        columns: list[Sequence[Any]] = list(zip(*rows))  # noqa: B905 (equal lengths)
        for index, convert in self._active:
            columns[index] = convert(columns[index])
        arrays = []
        pool = self.memory_pool
        for column, values, arrow in zip(self.columns, columns, self.types, strict=True):
            try:
                arrays.append(pa.array(values, type=arrow, memory_pool=pool))
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise ValueError(
                    f"The Parquet column {column.name!r} ({arrow}) cannot hold a value: {exc}"
                ) from exc
        return arrays

    # --- the file -----------------------------------------------------------------

    def start(self) -> bytes:
        """Open the writer; return the magic ``PAR1``, sent before the query runs."""
        self._writer = pq.ParquetWriter(
            self._sink,
            self.schema,
            compression=self.compression,
            compression_level=self.compression_level,
            memory_pool=self.memory_pool,
        )
        return self._sink.drain()

    def _write_group(self, rows: int) -> None:
        """Write the first ``rows`` buffered rows as one row group; keep the rest."""
        assert self._writer is not None
        table = pa.Table.from_batches(self._batches, schema=self.schema)
        self._writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)  # zero-copy
        self._batches = rest.to_batches()
        self._buffered = rest.num_rows
        self._buffered_bytes = rest.nbytes if self._buffered else 0

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Buffer a batch of rows; return the bytes of the row groups it completed (often none).

        Raises ``ValueError`` naming the column when a value does not fit its type.
        """
        if not rows:
            self._last_size = 0
            return b""
        batch = pa.RecordBatch.from_arrays(self._arrays(rows), schema=self.schema)
        self._last_size = batch.nbytes
        self._batches.append(batch)
        self._buffered += batch.num_rows
        self._buffered_bytes += batch.nbytes
        while self._buffered >= self.row_group_rows or (
            self._buffered and self._buffered_bytes >= self.row_group_bytes
        ):
            self._write_group(min(self._buffered, self.row_group_rows))
        return self._sink.drain()

    def rendered_size(self, data: bytes) -> int:
        """Return the Arrow size in bytes of the last batch of rows: it sizes the next slice.

        The bytes :meth:`render_rows` returns are whole compressed row groups, or none.
        """
        return self._last_size

    def close(self) -> None:
        """Drop an unfinished file (after a failure or a disconnect); nothing is sent."""
        if self._writer is not None and self._writer.is_open:
            try:
                self._writer.close()
            finally:
                self._writer = None
                self._sink.drain()

    def end(self, rows: int | None = None) -> bytes:
        """Write the last row group and the footer; return them (ends with ``PAR1``)."""
        assert self._writer is not None
        if self._buffered:
            self._write_group(self._buffered)
        self._writer.close()
        return self._sink.drain()

    def error(self, code: str, message: str) -> bytes:
        """Return nothing: without its footer the file does not open, and the transfer aborts.

        Frees the buffered rows.
        """
        self._batches.clear()
        self._buffered = self._buffered_bytes = 0
        return b""
