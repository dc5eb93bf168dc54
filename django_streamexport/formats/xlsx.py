"""XLSX (Office Open XML SpreadsheetML, ECMA-376), streamed: a workbook written as rows arrive.

The workbook is a zip (ECMA-376 Part 2, OPC) written by the standard library's
:mod:`zipfile` into a non-seekable buffer that is drained after every write, so each
part leaves as it is compressed: no seek, no temporary file, memory independent of the
row count.  On a non-seekable file ``zipfile`` writes each member's local header with
the sizes unknown ("version needed" 2.0, general purpose flag 0x08) and a data
descriptor after the data; the central directory, at the end of the zip, lists them all.

Parts, in the order they are written::

    _rels/.rels, xl/styles.xml           before the query runs
    xl/worksheets/sheet1.xml ...         the rows, one sheet after another
    xl/workbook.xml, xl/_rels/workbook.xml.rels, [Content_Types].xml, central directory

``workbook.xml`` comes last because it names the sheets, and an export learns how many
sheets it needs only at its end: a sheet holds at most 1,048,576 rows (Excel's limit,
header included), and a sheet part is kept below 2 GiB uncompressed, because ``zipfile``
refuses at ``close()`` a member that passed 2 GiB without ZIP64 (CPython's
``ZIP64_LIMIT``), after its bytes went out.  No member is written with ZIP64: reports
disagree on whether Excel accepts ZIP64 records where they are not needed.  An export that
needs another sheet continues on it with the header repeated.

Cells (ECMA-376 Part 1, §18.3.1.4 ``c``):

* text: an inline string (``t="inlineStr"``), so no shared-strings table is held in
  memory and no text is ever evaluated as a formula (no ``'`` prefix, unlike CSV).
  Characters XML 1.0 forbids (C0 controls but tab and line feed, CR as Office asks,
  U+FFFE, U+FFFF, lone surrogates) are written as ``_xHHHH_``, and a literal
  ``_xHHHH_`` in the data as ``_x005F_xHHHH_``, so it reads back unchanged (ECMA-376
  Part 1 §22.9.2.19 ST_Xstring).  Texts over 32,767 characters (Excel's cell limit) are
  cut to it; the export logs how many cells were cut.
* integers and floats: numbers; integers of 16 digits or more, infinities and NaN as
  text (Excel keeps 15 significant digits);
* ``Decimal``: its exact text in a numeric cell (Excel itself keeps 15 significant
  digits of it);
* booleans: ``t="b"``;
* dates, datetimes and times: serial numbers in the 1900 date system with a
  ``yyyy-mm-dd``, ``yyyy-mm-dd hh:mm:ss`` or ``hh:mm:ss`` number format, so spreadsheets
  sort and filter them.  Excel has no time zones: aware datetimes are written as wall
  time in ``time_zone`` (default ``STREAMEXPORT_XLSX_TIME_ZONE``, else the export's time
  zone, else ``TIME_ZONE``).
  Dates before 1900-03-01 (where the 1900 system counts a day that never was) are text.
* durations, UUIDs, JSON and binary: text, spelled as in CSV; ``None``: an empty ``<c/>``.

Rows and cells carry no ``r`` reference (ECMA-376 Part 1 §18.3.1.73 and §18.3.1.4 make it
optional; readers number them in order), which keeps the sheet XML about a third smaller
and lets each batch be joined in C; so every cell is written in its place, an empty one as
``<c/>``.

A batch of rows is written column by column: a column's texts are escaped at once by
C-level string methods (joined, escaped, split apart), text by text only when one holds a
character XML forbids or passes the cell limit.  On PostgreSQL, database formatting
(``STREAMEXPORT_DATABASE_FORMATTING``) has the database spell the decimal, float and
datetime cells, which cost Python the most (:meth:`XLSXFormat.database_cells`,
:mod:`django_streamexport.postgresql.xlsx`): the same bytes.  A serial that is a whole
number is written without ``.0``, as PostgreSQL prints it.

The header row is bold and frozen, with an autofilter over the data; column widths come
from the header and the text of the first rendered cells.  A failure after the first byte sends
nothing more: the workbook has no central directory, so it never opens as complete.
"""

from __future__ import annotations

import datetime
import logging
import math
import re
import sys
import zipfile
import zoneinfo
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import IO, Any, ClassVar, cast
from xml.sax.saxutils import escape, quoteattr

from django.conf import settings
from django.utils.duration import duration_iso_string

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn
from django_streamexport.conf import conf
from django_streamexport.formats.base import (
    Converter,
    ExportFormat,
    OutputBuffer,
    Row,
    binary_text,
    choices_converter,
)
from django_streamexport.formats.csv import json_text, other_text

__all__ = ["MAX_CELL_CHARS", "MAX_SHEET_ROWS", "XLSXFormat", "sheet_name"]

logger = logging.getLogger("django_streamexport")

#: Rows per worksheet, header included (Excel specifications and limits).
MAX_SHEET_ROWS = 1_048_576
#: Characters per cell (Excel specifications and limits).
MAX_CELL_CHARS = 32_767
#: Uncompressed bytes per sheet part: below CPython zipfile's ZIP64_LIMIT (2 GiB - 1), with
#: room for the part's closing tags.
MAX_SHEET_BYTES = (1 << 31) - 1 - (1 << 20)

_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"

#: Style indexes into ``cellXfs`` (:data:`_STYLES`).
_BOLD, _DATE, _DATETIME, _TIME = 1, 2, 3, 4
_STYLES = (
    _XML + f'<styleSheet xmlns="{_MAIN}">'
    '<numFmts count="3"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/>'
    '<numFmt numFmtId="165" formatCode="yyyy-mm-dd hh:mm:ss"/>'
    '<numFmt numFmtId="166" formatCode="hh:mm:ss"/></numFmts>'
    '<fonts count="2"><font><sz val="11"/><name val="Calibri"/></font>'
    '<font><b/><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill>'
    '<fill><patternFill patternType="gray125"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="5"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    '<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1"/>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="165" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    '<xf numFmtId="166" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/>'
    "</cellXfs>"
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)
_ROOT_RELS = (
    _XML + f'<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" '
    f'Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
)

# XML 1.0 forbids C0 controls but tab, LF and CR; Office asks for CR escaped too
# ([MS-OI29500] 2.1.1747).  Lone surrogates cannot be encoded; U+FFFE/U+FFFF are
# non-characters XML excludes.
_ESCAPED = [*range(0x00, 0x09), 0x0B, 0x0C, 0x0D, *range(0x0E, 0x20), 0xFFFE, 0xFFFF]
_TEXT_TABLE = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        **{chr(code): f"_x{code:04X}_" for code in _ESCAPED},
        **{chr(code): f"_x{code:04X}_" for code in range(0xD800, 0xE000)},
    }
)
#: The underscore that starts a literal ``_xHHHH_`` (a lookahead: two may share one).
_LITERAL_ESCAPE = re.compile(r"_(?=x[0-9A-Fa-f]{4}_)")
_SHEET_NAME_FORBIDDEN = re.compile(r"[\[\]:*?/\\\x00-\x1f]")

#: Day 0 of the 1900 date system as spreadsheets count from 1900-03-01 on.
_EPOCH = datetime.date(1899, 12, 30)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_FIRST_SERIAL_DATE = datetime.date(1900, 3, 1)
_FIRST_SERIAL_DATETIME = datetime.datetime(1900, 3, 1)
#: Aware datetimes from here on are on or after 1900-03-01 in every zone (offsets < 1 day).
_FIRST_SERIAL_UTC = _FIRST_SERIAL_DATETIME.replace(tzinfo=datetime.timezone.utc) + (
    datetime.timedelta(days=1)
)
_FIRST_SERIAL_STAMP = _FIRST_SERIAL_UTC.timestamp()
_MICROSECOND = datetime.timedelta(microseconds=1)
_UNIX_EPOCH_UTC = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_UNIX_EPOCH = datetime.datetime(1970, 1, 1)
#: The text a reader shows in a cell's XML (what sizes its column).
_CELL_TEXT = re.compile(r"<(?:v|t(?: [^>]*)?)>([^<]*)<")
#: Whitespace that needs ``xml:space="preserve"`` at either end of a text.
_EDGE = (" ", "\t", "\n")
#: Separates the texts of a column while a batch of them is escaped at once (NUL: a
#: column holding it is written text by text).
_SEPARATOR = "\x00"
#: ASCII character -> its class for :meth:`XLSXFormat._batch_text_cells`: ``S`` the
#: separator, ``W`` whitespace at a text's edge, ``F`` forbidden in XML (CR included).
_ASCII_CLASSES = bytes(
    ord("S") if code == 0 else ord("W") if chr(code) in _EDGE else ord("F") if code < 32 else 46
    for code in range(256)
)
#: Characters XML forbids but NUL (the separator, counted instead), and CR.
_FORBIDDEN = re.compile("[\x01-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")
#: Uncompressed XML handed to the background compressor at once (about 50 KiB compressed,
#: a chunk): large enough that the thread switch (the GIL's 5 ms switch interval) is paid
#: rarely, small enough that chunks stay small and memory flat.
BACKGROUND_JOB_BYTES = 256 << 10
#: Hours whose UTC offset :meth:`XLSXFormat._hour_offset` keeps, before starting afresh.
_OFFSET_CACHE_HOURS = 1024
_UNKNOWN = object()
_LAST_MICROSECOND = datetime.timedelta(hours=1) - datetime.timedelta(microseconds=1)
#: The serial of 1970-01-01 (Unix time 0).
_UNIX_SERIAL = datetime.date(1970, 1, 1).toordinal() - _EPOCH_ORDINAL
_INT_LIMIT = 10**15
#: A cell with no value: cells carry no ``r`` reference, so an empty one keeps its place.
_EMPTY = "<c/>"


def _present(values: Sequence[Any]) -> Sequence[Any]:
    """Return ``values`` without its ``None`` (``values`` itself when it has none)."""
    return [v for v in values if v is not None] if None in values else values


def _with_empty_cells(values: Sequence[Any], present: Sequence[Any], cells: list[str]) -> list[str]:
    """Return ``cells`` (one per value of ``present``, :func:`_present` of ``values``) with
    an empty cell put back where ``values`` holds ``None``."""
    if present is values:
        return cells
    next_cell = iter(cells).__next__
    return [_EMPTY if v is None else next_cell() for v in values]


def _serial(micros: int) -> float:
    """Return the serial of the wall time ``micros`` microseconds after 1970-01-01 00:00.

    In IEEE double arithmetic, in this order, as PostgreSQL computes ``date_part('epoch',
    wall) / 86400 + 25569`` (:mod:`django_streamexport.postgresql.xlsx`): the seconds
    rounded once, then the days, then the shift to the 1900 date system.
    """
    return micros / 1_000_000 / 86400 + _UNIX_SERIAL  # int / int: rounded once


def _number(value: float) -> str:
    """Return a finite float as PostgreSQL prints it: ``repr()``, whole numbers without ``.0``."""
    return f"{value:.0f}" if value.is_integer() else repr(value)


def _numbers(values: list[float]) -> list[str] | list[float]:
    """Return :func:`_number` of each value, or the values themselves when none is whole
    (an f-string then writes their ``repr()``), which one C-level test finds."""
    if any(map(float.is_integer, values)):
        return list(map(_number, values))
    return values


def _as_they_are(cells: Sequence[str]) -> Sequence[str]:
    """Return a column of cells PostgreSQL spelled (their XML) as they are."""
    return cells


def column_letter(index: int) -> str:
    """Return the column name of 0-based ``index``: ``A``... ``Z``, ``AA``... (up to ``XFD``)."""
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(65 + remainder) + name
    return name


def sheet_name(title: str, number: int = 1) -> str:
    """Return a valid worksheet name for ``title``: the ``number``-th sheet of it.

    At most 31 characters, none of ``[ ] : * ? / \\``, not starting or ending with
    ``'`` (Excel's rules); the second and later sheets end with `` (2)``, `` (3)``...
    """
    name = _SHEET_NAME_FORBIDDEN.sub(" ", str(title)).strip().strip("'").strip() or "Export"
    suffix = f" ({number})" if number > 1 else ""
    return name[: 31 - len(suffix)].rstrip().rstrip("'") + suffix


class _ThreadWriter:
    """Run jobs one at a time in a thread of their own (``concurrent.futures``)."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="streamexport-xlsx")

    def submit(self, function: Callable[..., Any], *args: Any) -> Any:
        return self._executor.submit(function, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


class _GeventJob:
    def __init__(self, result: Any) -> None:
        self._result = result

    def done(self) -> bool:
        return bool(self._result.ready())

    def result(self) -> Any:
        return self._result.get()


class _GeventWriter:
    """Run jobs in gevent's hub thread pool: real threads in a monkey-patched process."""

    def __init__(self) -> None:
        import gevent  # type: ignore[import-untyped]

        self._pool = gevent.get_hub().threadpool

    def submit(self, function: Callable[..., Any], *args: Any) -> _GeventJob:
        return _GeventJob(self._pool.spawn(function, *args))

    def shutdown(self) -> None:
        pass


def background_writer() -> _ThreadWriter | _GeventWriter:
    """Return a runner of one background job at a time, in a real OS thread.

    zlib releases the GIL while it compresses (CPython ``Modules/zlibmodule.c``), so a
    batch compresses on another core while the next one's XML is built.  In a process
    gevent has monkey-patched, ``threading`` makes greenlets, so gevent's hub thread
    pool (real threads) runs the jobs instead.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return _GeventWriter()
    return _ThreadWriter()


class XLSXFormat(ExportFormat):
    """Write rows as an Excel workbook (``.xlsx``), streamed as a zip of parts.

    Options: ``time_zone`` (name of the zone aware datetimes are written in; default
    ``STREAMEXPORT_XLSX_TIME_ZONE``, else the export's time zone (the plan's
    ``time_zone``, ``STREAMEXPORT_TIME_ZONE``; :meth:`set_time_zone`), else
    ``TIME_ZONE``), ``compress_level`` (deflate level 0-9, default
    ``STREAMEXPORT_XLSX_COMPRESS_LEVEL``, 1), ``sheet_title`` (the
    sheet name; default the format's ``title``, the exported model's
    ``verbose_name_plural``).  ``max_sheet_rows`` (rows per sheet, header included) and
    ``max_sheet_bytes`` (uncompressed bytes per sheet part) are Excel's and zipfile's
    limits; lower them only to try sheet breaks.

    :meth:`render_rows` returns the compressed bytes that are ready, often none; the
    stream sizes its slices by :meth:`rendered_size`, the uncompressed XML.
    """

    format = "xlsx"
    media_type = f"{_CT}.sheet"
    extension = "xlsx"
    charset = ""  # binary: no charset parameter
    #: Kinds written as text, with the converter that spells them (CSV's rules).
    text_converters: ClassVar[dict[str, Converter]] = {
        kinds.DURATION: duration_iso_string,
        kinds.UUID: str,
        kinds.JSON: json_text,
        kinds.BINARY: binary_text,
        kinds.OTHER: other_text,
    }

    def __init__(
        self,
        columns: Sequence[ResolvedColumn],
        *,
        time_zone: str | None = None,
        compress_level: int | None = None,
        sheet_title: str | None = None,
        max_sheet_rows: int = MAX_SHEET_ROWS,
        max_sheet_bytes: int = MAX_SHEET_BYTES,
        background_compression: bool = True,
    ) -> None:
        zone = time_zone or conf.XLSX_TIME_ZONE
        # An XLSX zone of its own wins over the export's (set_time_zone()).
        self._own_time_zone = bool(zone)
        self.time_zone: datetime.tzinfo = zoneinfo.ZoneInfo(zone or settings.TIME_ZONE or "UTC")
        self.compress_level = conf.XLSX_COMPRESS_LEVEL if compress_level is None else compress_level
        self.sheet_title = sheet_title
        self.max_sheet_rows = max_sheet_rows
        self.max_sheet_bytes = max_sheet_bytes
        self.background_compression = background_compression
        #: Cells cut to :data:`MAX_CELL_CHARS` characters so far.
        self.cut_cells = 0
        self._sink = OutputBuffer()
        self._zip: zipfile.ZipFile | None = None
        self._sheet: Any = None
        self._sheets: list[str] = []
        self._sheet_last_rows: list[int] = []
        self._sheet_rows = 0
        self._sheet_bytes = 0
        self._last_size = 0
        self._widths: list[int] | None = None
        self._writer: Any = None  # background_writer(), from start() to end() or close()
        self._job: Any = None
        self._ready: list[bytes] = []
        self._held: list[bytes] = []  # XML waiting for the next background job
        self._held_size = 0
        self._offsets: dict[float, float | None] = {}
        super().__init__(columns)
        self._letters = [column_letter(index) for index in range(len(self.columns))]
        self._writers = [self.get_cell_writer(column) for column in self.columns]
        self._text_writers = [
            _as_they_are if spelled else write
            for spelled, write in zip(self.database_cells(), self._writers, strict=True)
        ]

    # --- values -------------------------------------------------------------------

    def set_time_zone(self, zone: datetime.tzinfo | None) -> None:
        """Write wall times in the export's ``zone``, unless this workbook has a zone of its own.

        Its own: the ``time_zone`` option or ``STREAMEXPORT_XLSX_TIME_ZONE``.  ``None``
        keeps ``TIME_ZONE``.
        """
        if zone is None or self._own_time_zone:
            return
        self.time_zone = zone
        self._offsets.clear()

    def get_converter(self, column: ResolvedColumn) -> Converter | None:
        """Return the converter to text for choices labels and kinds written as text."""
        if column.choices is not None:
            return choices_converter(dict(column.choices))
        return self.text_converters.get(column.kind)

    def get_cell_writer(self, column: ResolvedColumn) -> Callable[[Sequence[Any]], list[str]]:
        """Return the function from a column of (converted) values to their ``<c>`` elements."""
        if column.choices is not None or column.kind in self.text_converters:
            return self._text_cells
        writer = {
            kinds.INTEGER: self._integer_cells,
            kinds.FLOAT: self._float_cells,
            kinds.DECIMAL: self._decimal_cells,
            kinds.BOOLEAN: self._boolean_cells,
            kinds.DATE: self._date_cells,
            kinds.DATETIME: self._datetime_cells,
            kinds.TIME: self._time_cells,
        }.get(column.kind, self._text_cells)
        return writer

    def text_element(self, value: str) -> str:
        """Return the ``<t>`` element of ``value``: escaped, cut to :data:`MAX_CELL_CHARS`."""
        if len(value) > MAX_CELL_CHARS:
            value = value[:MAX_CELL_CHARS]
            self.cut_cells += 1
        if "_x" in value:
            value = _LITERAL_ESCAPE.sub("_x005F_", value)
        value = value.translate(_TEXT_TABLE)
        if value[:1] in _EDGE or value[-1:] in _EDGE:
            return f'<t xml:space="preserve">{value}</t>'
        return f"<t>{value}</t>"

    def text_cell(self, value: str) -> str:
        """Return an inline-string cell holding ``value`` (never evaluated as a formula)."""
        return f'<c t="inlineStr"><is>{self.text_element(value)}</is></c>'

    def _text_cells(self, values: Sequence[Any]) -> list[str]:
        present = _present(values)
        cells = self._batch_text_cells(present)
        if cells is None:
            text_cell = self.text_cell
            return [_EMPTY if v is None else text_cell(str(v)) for v in values]
        return _with_empty_cells(values, present, cells)

    @staticmethod
    def _batch_text_cells(texts: Sequence[Any]) -> list[str] | None:
        """Return the cells of ``texts`` (strings, no ``None``) as :meth:`text_cell` writes
        them, escaped all at once by C-level string methods, or ``None`` if one needs more.

        The texts are joined with NUL between them, which no escape matches or makes,
        escaped, and split apart again (only when one needs an entity or ``_x005F_``).
        ``None`` (text by text) when a text holds a character XML forbids (NUL and CR
        included) or is longer than a cell may be.
        """
        if not texts:
            return []
        try:
            joined = _SEPARATOR.join(texts)
        except TypeError:  # not all str
            return None
        if max(map(len, texts)) > MAX_CELL_CHARS:
            return None
        edges = True  # unknown: tested text by text below
        if joined.isascii():
            # One pass classifies every character (bytes.translate), then memchr-fast
            # searches: a forbidden one, and whitespace next to a separator or at an end.
            classes = joined.encode("ascii").translate(_ASCII_CLASSES)
            if b"F" in classes or classes.count(b"S") != len(texts) - 1:
                return None
            edges = (
                classes[:1] == b"W" or classes[-1:] == b"W" or b"WS" in classes
                or b"SW" in classes
            )  # fmt: skip
        elif joined.count(_SEPARATOR) != len(texts) - 1 or _FORBIDDEN.search(joined):
            return None
        escaped = texts
        if "&" in joined or "<" in joined or ">" in joined or "_x" in joined:
            if "_x" in joined:
                joined = _LITERAL_ESCAPE.sub("_x005F_", joined)
            joined = joined.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            escaped = joined.split(_SEPARATOR)
        if not edges:
            return [f'<c t="inlineStr"><is><t>{v}</t></is></c>' for v in escaped]
        edge = _EDGE
        return [
            f'<c t="inlineStr"><is><t xml:space="preserve">{v}</t></is></c>'
            if v[:1] in edge or v[-1:] in edge
            else f'<c t="inlineStr"><is><t>{v}</t></is></c>'
            for v in escaped
        ]

    def _integer_cells(self, values: Sequence[Any]) -> list[str]:
        present = _present(values)
        if not present or (-_INT_LIMIT < min(present) and max(present) < _INT_LIMIT):
            return [_EMPTY if v is None else f"<c><v>{v}</v></c>" for v in values]
        text_cell, limit = self.text_cell, _INT_LIMIT
        return [
            _EMPTY
            if v is None
            else f"<c><v>{v}</v></c>"
            if -limit < v < limit
            else text_cell(str(v))
            for v in values
        ]

    def _float_cells(self, values: Sequence[Any]) -> list[str]:
        present = _present(values)
        if all(map(math.isfinite, present)):
            return [_EMPTY if v is None else f"<c><v>{v!r}</v></c>" for v in values]
        text_cell = self.text_cell
        return [
            _EMPTY
            if v is None
            else f"<c><v>{v!r}</v></c>"
            if math.isfinite(v)
            else text_cell(repr(v))
            for v in values
        ]

    def _decimal_cells(self, values: Sequence[Decimal | None]) -> list[str]:
        present = _present(values)
        if all(map(Decimal.is_finite, present)):
            return [_EMPTY if v is None else f"<c><v>{v:f}</v></c>" for v in values]
        text_cell = self.text_cell
        return [
            _EMPTY if v is None else f"<c><v>{v:f}</v></c>" if v.is_finite() else text_cell(str(v))
            for v in values
        ]

    @staticmethod
    def _boolean_cells(values: Sequence[Any]) -> list[str]:
        return [
            _EMPTY if v is None else '<c t="b"><v>1</v></c>' if v else '<c t="b"><v>0</v></c>'
            for v in values
        ]

    def _date_cells(self, values: Sequence[datetime.date | None]) -> list[str]:
        text_cell, first, epoch = self.text_cell, _FIRST_SERIAL_DATE, _EPOCH_ORDINAL
        return [
            _EMPTY
            if v is None
            else f'<c s="{_DATE}"><v>{v.toordinal() - epoch}</v></c>'
            if v >= first
            else text_cell(v.isoformat())
            for v in values
        ]

    def _datetime_cells(self, values: Sequence[datetime.datetime | None]) -> list[str]:
        # The common case, a column of aware datetimes after 1900: Unix times, plus the
        # zone's offset, looked up once per UTC hour of the batch.
        present = _present(values)
        serials = self._datetime_serials(present)
        if serials is None:
            cell = self._datetime_cell
            return [_EMPTY if v is None else cell(v) for v in values]
        cells = [f'<c s="{_DATETIME}"><v>{text}</v></c>' for text in _numbers(serials)]
        return _with_empty_cells(values, present, cells)

    def _datetime_serials(self, values: Sequence[Any]) -> list[float] | None:
        """Return the serials of aware datetimes after 1900 (no ``None``), else ``None``.

        :func:`_serial` of the wall time: Unix time plus the zone's UTC offset, looked up
        once per UTC hour of the batch (``None`` too when an hour holds an offset change).
        """
        if not values or values[0].tzinfo is None:
            return None
        try:
            # timestamp() is the exact microseconds / 10**6, rounded once (timedelta's
            # true division), as PostgreSQL's date_part('epoch', ...) computes it.
            stamps = [v.timestamp() for v in values]
        except TypeError:  # a naive value among aware ones
            return None
        if min(stamps) < _FIRST_SERIAL_STAMP:
            return None
        offsets = self._offsets
        hours = {stamp // 3600 for stamp in stamps}
        for hour in hours:
            if offsets.get(hour, _UNKNOWN) is _UNKNOWN:
                self._hour_offset(hour)
        if any(offsets.get(hour) is None for hour in hours):
            return None
        offset = cast(Callable[[float], float], offsets.__getitem__)
        shifts = {offset(hour) for hour in hours}
        # Adding whole seconds keeps the rounding of the exact wall time (the sum is on the
        # same grid of doubles) unless the values cross a power of two: then exactly.
        low = min(stamps) + min(0.0, *shifts)
        high = max(stamps) + max(0.0, *shifts)
        if low < 1 or int(low).bit_length() != int(high).bit_length():
            return [self._exact_serial(v, offset(v.timestamp() // 3600)) for v in values]
        return [(stamp + offset(stamp // 3600)) / 86400 + _UNIX_SERIAL for stamp in stamps]

    @staticmethod
    def _exact_serial(value: datetime.datetime, offset: float) -> float:
        micros = (value - _UNIX_EPOCH_UTC) // _MICROSECOND + round(offset * 1_000_000)
        return _serial(micros)

    def _aware_serial(self, value: datetime.datetime) -> float | None:
        """Return one aware datetime's serial as :meth:`_datetime_serials` computes it.

        ``None`` before 1900-03-01 (in any zone) or in an hour holding an offset change.
        """
        if value < _FIRST_SERIAL_UTC:
            return None
        hour = value.timestamp() // 3600
        offset: Any = self._offsets.get(hour, _UNKNOWN)
        if offset is _UNKNOWN:
            offset = self._hour_offset(hour)
        return None if offset is None else self._exact_serial(value, offset)

    def _hour_offset(self, hour: float) -> float | None:
        """Return ``time_zone``'s UTC offset (seconds) all through UTC ``hour``, or ``None``.

        ``None`` when the offset at the hour's start and at its last microsecond differ (a
        transition inside the hour, such as half-hour zones' daylight saving changes).
        """
        if len(self._offsets) >= _OFFSET_CACHE_HOURS:
            self._offsets.clear()
        start = datetime.datetime.fromtimestamp(hour * 3600, datetime.timezone.utc)
        first = start.astimezone(self.time_zone).utcoffset()
        last = (start + _LAST_MICROSECOND).astimezone(self.time_zone).utcoffset()
        offset = first.total_seconds() if first == last and first is not None else None
        self._offsets[hour] = offset
        return offset

    def _datetime_cell(self, value: datetime.datetime) -> str:
        if value.tzinfo is not None:
            serial = self._aware_serial(value)
            if serial is not None:
                return f'<c s="{_DATETIME}"><v>{_number(serial)}</v></c>'
            value = value.astimezone(self.time_zone).replace(tzinfo=None)
        if value < _FIRST_SERIAL_DATETIME:
            return self.text_cell(value.isoformat())
        serial = _serial((value - _UNIX_EPOCH) // _MICROSECOND)
        return f'<c s="{_DATETIME}"><v>{_number(serial)}</v></c>'

    @staticmethod
    def _time_cells(values: Sequence[datetime.time | None]) -> list[str]:
        return [
            _EMPTY
            if v is None
            else f'<c s="{_TIME}"><v>'
            f"{(v.hour * 3600 + v.minute * 60 + v.second + v.microsecond / 1e6) / 86400!r}"
            "</v></c>"
            for v in values
        ]

    # --- the zip ------------------------------------------------------------------

    def _write(self, name: str, text: str) -> None:
        assert self._zip is not None
        self._zip.writestr(name, text.encode("utf-8"))

    def start(self) -> bytes:
        """Return the zip's first parts (relationships, styles): sent before the query runs."""
        self._zip = zipfile.ZipFile(
            cast(IO[bytes], self._sink),
            "w",
            compression=zipfile.ZIP_DEFLATED,
            compresslevel=self.compress_level,
        )
        self._write("_rels/.rels", _ROOT_RELS)
        self._write("xl/styles.xml", _STYLES)
        if self.background_compression:
            self._writer = background_writer()
        return self._sink.drain()

    def _width(self, index: int, cells: Sequence[str]) -> int:
        """Return the width of column ``index`` from its header and ``cells`` (their XML)."""
        column = self.columns[index]
        fixed = {kinds.DATE: 12, kinds.DATETIME: 20, kinds.TIME: 10, kinds.BOOLEAN: 7}
        longest = len(column.label) + 3  # room for the autofilter button
        if column.choices is None and column.kind in fixed:
            longest = max(longest, fixed[column.kind])
        else:
            for cell in cells:
                if (text := _CELL_TEXT.search(cell)) is not None:
                    longest = max(longest, min(len(text[1]), 60) + 2)
        return max(8, min(longest, 80))

    def _open_sheet(self, cells: Sequence[Sequence[str]]) -> None:
        """Start the next sheet part: the frozen header row, then rows follow.

        ``cells``: the first rows' cells (their XML), column by column, to size the columns.
        """
        assert self._zip is not None
        self._wait()
        if self._widths is None:
            self._widths = [
                self._width(index, cells[index] if cells else ())
                for index in range(len(self.columns))
            ]
        number = len(self._sheets) + 1
        self._sheets.append(sheet_name(self.sheet_title or self.title or "Export", number))
        self._sheet = self._zip.open(f"xl/worksheets/sheet{number}.xml", "w")
        cols = "".join(
            f'<col min="{i}" max="{i}" width="{width}" customWidth="1"/>'
            for i, width in enumerate(self._widths, 1)
        )
        header = "".join(
            f'<c t="inlineStr" s="{_BOLD}"><is>{self.text_element(c.label)}</is></c>'
            for c in self.columns
        )
        selected = ' tabSelected="1"' if number == 1 else ""
        head = (
            f'{_XML}<worksheet xmlns="{_MAIN}" xmlns:r="{_REL}"><sheetViews>'
            f'<sheetView workbookViewId="0"{selected}>'
            '<pane ySplit="1" topLeftCell="A2" activePane="bottomLeft" state="frozen"/>'
            f"</sheetView></sheetViews><cols>{cols}</cols><sheetData>"
            f"<row>{header}</row>"
        ).encode()
        self._sheet.write(head)
        self._sheet_rows = 1
        self._sheet_bytes = len(head)

    def _close_sheet(self) -> None:
        self._wait()
        self._sheet_last_rows.append(self._sheet_rows)
        last = f"{self._letters[-1]}{self._sheet_rows}"
        self._sheet.write(f'</sheetData><autoFilter ref="A1:{last}"/></worksheet>'.encode())
        self._sheet.close()  # writes the data descriptor
        self._sheet = None

    def _flush(self, lines: list[str]) -> None:
        """Hand ``lines`` to the sheet: compressed by the background writer when there is one."""
        if lines:
            data = "".join(lines).encode("utf-8")
            self._sheet_bytes += len(data)
            self._last_size += len(data)
            lines.clear()
            if self._writer is None:
                self._sheet.write(data)
                return
            self._held.append(data)
            self._held_size += len(data)
            if self._held_size >= BACKGROUND_JOB_BYTES:
                self._submit()

    def _submit(self) -> None:
        """Compress the held XML in the background (after the job before it)."""
        data = b"".join(self._held)
        self._held.clear()
        self._held_size = 0
        self._wait_job()
        self._ready.append(self._sink.drain())
        if data:
            self._job = self._writer.submit(self._sheet.write, data)

    def _wait(self) -> None:
        """Write what is held and wait for the background writer, so the sheet is current."""
        if self._held:
            self._submit()
        self._wait_job()

    def _wait_job(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.result()  # raises what the job raised

    def _output(self) -> bytes:
        """Return the compressed bytes ready (not those of a batch still compressing)."""
        ready, self._ready = self._ready, []
        if self._job is None or self._job.done():
            self._wait_job()
            ready.append(self._sink.drain())
        return b"".join(ready)

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Write a batch of rows into the current sheet; return the compressed bytes ready."""
        return self._render(rows, self._writers)

    def render_text_rows(self, rows: Sequence[Row]) -> bytes:
        """Write rows read with PostgreSQL's spelling of some cells (:meth:`database_cells`).

        Those columns hold each cell's XML already (never ``None``); the others hold their
        values, as for :meth:`render_rows`.
        """
        return self._render(rows, self._text_writers)

    def database_cells(self) -> list[bool]:
        """Say, column by column, whether PostgreSQL spells its cells (database formatting).

        Default: decimals, floats and (under ``USE_TZ``) datetimes, whose spelling costs
        Python more (a ``Decimal`` per value, then its text; ``repr()`` of a float, of a
        serial) than the database, which then spells them as :meth:`render_rows` would
        (:mod:`django_streamexport.postgresql.xlsx`); other cells cost Python little and
        PostgreSQL more (each text check scans the value again).
        """
        spelled = (kinds.DECIMAL, kinds.FLOAT, kinds.DATETIME) if settings.USE_TZ else (
            kinds.DECIMAL, kinds.FLOAT)  # fmt: skip
        return [column.choices is None and column.kind in spelled for column in self.columns]

    def database_text_refusal(self) -> str | None:
        """Return ``None`` (PostgreSQL can spell some cells) unless a subclass changes them.

        A subclass that overrides how values are converted or written is refused with the
        hook's name, as is a workbook where PostgreSQL spells no column.
        """
        cls = type(self)
        hooks = ("get_converter", "get_batch_converter", "get_cell_writer", "render_rows",
                 "text_cell", "text_element", "text_converters", "batch_converters")  # fmt: skip
        for hook in hooks:
            if getattr(cls, hook) is not getattr(XLSXFormat, hook):
                return f"{cls.__name__} overrides {hook}"
        if not any(self.database_cells()):
            return "no column is a decimal, a float or a datetime, which PostgreSQL spells cheaper"
        return None

    def _render(self, rows: Sequence[Row], writers: Sequence[Callable[[Any], Any]]) -> bytes:
        if not rows:
            return b""
        columns: list[Sequence[Any]] = list(zip(*rows))  # noqa: B905 (equal lengths)
        for index, convert in self._active:  # converters to text, column by column
            columns[index] = convert(columns[index])
        cells = [write(values) for write, values in zip(writers, columns, strict=True)]
        if self._sheet is None:
            self._open_sheet(cells)
        self._last_size = 0
        lines = list(map("".join, zip(*cells)))  # noqa: B905 (each row's cells, joined in C)
        # The common case: the whole batch fits the sheet; one join, one size check.
        text = "<row>" + "</row><row>".join(lines) + "</row>"
        if not self._sheet_full(len(lines) - 1, len(text)):
            self._sheet_rows += len(lines)
            self._flush([text])
            return self._output()
        pending: list[str] = []
        size = 0  # characters in pending
        for line in lines:
            line = f"<row>{line}</row>"
            if self._sheet_full(0, size + len(line)):
                self._flush(pending)
                size = 0
                if self._sheet_full(0, len(line)):
                    self._close_sheet()
                    self._open_sheet(())
            self._sheet_rows += 1
            pending.append(line)
            size += len(line)
        self._flush(pending)
        return self._output()

    def _sheet_full(self, rows: int, characters: int) -> bool:
        """Say whether the sheet cannot take one row more, plus ``rows`` more and
        ``characters`` more of XML (UTF-8: at most 4 bytes a character)."""
        return (
            self._sheet_rows + rows >= self.max_sheet_rows
            or self._sheet_bytes + 4 * characters > self.max_sheet_bytes
        )

    def rendered_size(self, data: bytes) -> int:
        """Return the uncompressed size of the last batch: what sizes the next slice."""
        return self._last_size

    def close(self) -> None:
        """Drop an unfinished workbook (after a failure or a disconnect); nothing is sent.

        The open sheet and the zip are closed into the sink, whose bytes are discarded, so
        ``zipfile`` has no open writing handle left to complain about when collected.
        """
        try:
            self._stop_writer()
            if self._zip is None or self._zip.fp is None:
                return
            if self._sheet is not None:
                self._sheet.close()
                self._sheet = None
            self._zip.close()
        finally:
            self._ready.clear()
            self._sink.drain()

    def _stop_writer(self) -> None:
        """Wait for the background writer's last job and let its thread go."""
        try:
            self._wait()
        finally:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.shutdown()

    def end(self, rows: int | None = None) -> bytes:
        """Close the last sheet, write the workbook, its relationships and content types."""
        assert self._zip is not None
        if self._sheet is None:
            self._open_sheet(())
        self._close_sheet()
        count = len(self._sheets)
        sheets = "".join(
            f'<sheet name={quoteattr(name)} sheetId="{i}" r:id="rId{i}"/>'
            for i, name in enumerate(self._sheets, 1)
        )
        # The autofilter's hidden name, as Excel writes it with every autofilter.
        names = "".join(
            f'<definedName name="_xlnm._FilterDatabase" localSheetId="{i}" hidden="1">'
            + escape(f"'{name.replace(chr(39), chr(39) * 2)}'!$A$1:${self._letters[-1]}${last}")
            + "</definedName>"
            for i, (name, last) in enumerate(zip(self._sheets, self._sheet_last_rows, strict=True))
        )
        self._write(
            "xl/workbook.xml",
            f'{_XML}<workbook xmlns="{_MAIN}" xmlns:r="{_REL}"><sheets>{sheets}</sheets>'
            f"<definedNames>{names}</definedNames></workbook>",
        )
        rels = "".join(
            f'<Relationship Id="rId{i}" Type="{_REL}/worksheet" Target="worksheets/sheet{i}.xml"/>'
            for i in range(1, count + 1)
        )
        self._write(
            "xl/_rels/workbook.xml.rels",
            f'{_XML}<Relationships xmlns="{_PKG_REL}">{rels}<Relationship Id="rId{count + 1}" '
            f'Type="{_REL}/styles" Target="styles.xml"/></Relationships>',
        )
        overrides = "".join(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="{_CT}.worksheet+xml"/>'
            for i in range(1, count + 1)
        )
        self._write(
            "[Content_Types].xml",
            f'{_XML}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/>'
            f"{overrides}</Types>",
        )
        self._zip.close()  # the central directory
        if self.cut_cells:
            logger.warning(
                "XLSX export: %d cells were longer than %d characters and were cut.",
                self.cut_cells,
                MAX_CELL_CHARS,
            )
        self._stop_writer()
        return self._output()
