"""CSV (RFC 4180) with a header row and spreadsheet formula escaping."""

from __future__ import annotations

import csv
import datetime
import io
from collections.abc import Iterable, Sequence
from typing import ClassVar

import orjson
from django.conf import settings
from django.utils import formats

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn
from django_streamexport.conf import conf
from django_streamexport.formats.base import (
    BatchConverter,
    Converter,
    ExportFormat,
    Row,
    datetime_text,
)

#: First characters that make a spreadsheet treat a cell as a formula, per
#: OWASP "CSV Injection" (= + - @ tab CR, and LF in one revision) and OWASP
#: ASVS 1.2.10 (NUL).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")

BOM = "\ufeff".encode()


def escape_formula(value: str) -> str:
    """Prefix ``'`` to text a spreadsheet would evaluate as a formula (OWASP CSV injection)."""
    if value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def escape_formulas(values: Sequence[str | None]) -> list[str | None]:
    """Return :func:`escape_formula` of each value of a column, ``None`` kept."""
    triggers = FORMULA_TRIGGERS
    return [
        "'" + value if value is not None and value.startswith(triggers) else value
        for value in values
    ]


def boolean_text(value: bool) -> str:
    """Return ``"true"`` or ``"false"``, the spelling NDJSON uses too."""
    return "true" if value else "false"


def boolean_texts(values: Sequence[bool | None]) -> list[str | None]:
    """Return :func:`boolean_text` of each value of a column, ``None`` kept."""
    return [None if value is None else "true" if value else "false" for value in values]


def json_text(value: object) -> str:
    """Return a JSON field's value as compact JSON text."""
    return orjson.dumps(value).decode()


def other_text(value: object) -> str:
    """Return a value of an unknown kind as text (lists and dicts as JSON)."""
    if isinstance(value, (list, dict, tuple)):
        return json_text(value)
    return str(value)


class CSVFormat(ExportFormat):
    """Write rows as RFC 4180 CSV: a header row of labels, CRLF line ends, minimal quoting.

    Values: ``None`` is an empty cell; booleans ``true``/``false``; datetimes
    ISO 8601 with their UTC offset; decimals exact; JSON as compact JSON text.
    Text cells (and choices labels) that start with one of
    :data:`FORMULA_TRIGGERS` get a ``'`` prefix unless escaping is off.
    Numbers, dates and other typed values are never altered.

    Options (default from settings): ``delimiter`` (one character,
    ``STREAMEXPORT_CSV_DELIMITER``), ``bom`` (``STREAMEXPORT_CSV_BOM``),
    ``escape_formulas`` (``STREAMEXPORT_CSV_ESCAPE_FORMULAS``) and ``header``
    (default True).
    """

    format = "csv"
    media_type = "text/csv"
    extension = "csv"
    independent_rows = True
    batch_converters: ClassVar[dict[Converter, BatchConverter]] = {
        **ExportFormat.batch_converters,
        escape_formula: escape_formulas,
        boolean_text: boolean_texts,
    }

    def __init__(
        self,
        columns: Sequence[ResolvedColumn],
        *,
        delimiter: str | None = None,
        bom: bool | None = None,
        escape_formulas: bool | None = None,
        header: bool = True,
    ) -> None:
        self.delimiter = conf.CSV_DELIMITER if delimiter is None else delimiter
        self.bom = conf.CSV_BOM if bom is None else bom
        self.escape_formulas = (
            conf.CSV_ESCAPE_FORMULAS if escape_formulas is None else escape_formulas
        )
        self.header = header
        self._buffer = io.StringIO()
        # RFC 4180: CRLF line breaks, fields with quotes, separators or line
        # breaks enclosed in double quotes, embedded quotes doubled.
        self._writer = csv.writer(
            self._buffer,
            delimiter=self.delimiter,
            quotechar='"',
            doublequote=True,
            lineterminator="\r\n",
            quoting=csv.QUOTE_MINIMAL,
        )
        super().__init__(columns)

    def get_converter(self, column: ResolvedColumn) -> Converter | None:
        """Add CSV spellings (booleans, datetimes, JSON) and formula escaping to the base."""
        convert = super().get_converter(column)
        if convert is None:
            # Under USE_TZ Django returns aware datetimes, which need only isoformat().
            aware = settings.USE_TZ
            spellings: dict[str, Converter] = {
                kinds.BOOLEAN: boolean_text,
                kinds.DATETIME: datetime.datetime.isoformat if aware else datetime_text,
                kinds.JSON: json_text,
                kinds.OTHER: other_text,
            }
            convert = spellings.get(column.kind)
        escape = column.escape_formulas
        if escape is None:
            escape = self.escape_formulas and column.kind == kinds.TEXT
        if not escape:
            return convert
        if convert is None:
            return escape_formula

        def convert_and_escape(value: object) -> object:
            value = convert(value)
            return escape_formula(value) if isinstance(value, str) else value

        return convert_and_escape

    def _drain(self) -> bytes:
        data = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return data.encode(self.charset)

    def start(self) -> bytes:
        """Return the optional BOM and the header row of column labels."""
        if self.header:
            self._writer.writerow([column.label for column in self.columns])
        head = self._drain()
        return BOM + head if self.bom else head

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Return a batch of rows as CSV lines, encoded in UTF-8."""
        return self.write_rows(self.convert_rows(rows))

    def write_rows(self, rows: Iterable[Row]) -> bytes:
        """Return rows of cells already converted (text or ``None``) as CSV lines, in UTF-8.

        :meth:`render_rows` after the converters, and :meth:`render_text_rows`.
        """
        self._writer.writerows(rows)
        return self._drain()

    def render_text_rows(self, rows: Sequence[Row]) -> bytes:
        """Return rows that PostgreSQL spelled (:mod:`django_streamexport.postgresql.text`)."""
        return self.write_rows(rows)

    def database_text_refusal(self) -> str | None:
        """Return ``None`` (PostgreSQL can spell these cells) unless a subclass changes them.

        A subclass that overrides a converter hook or :meth:`render_rows` writes
        something the SQL spelling does not know, so it is refused with the hook's name.
        """
        cls = type(self)
        for hook in ("get_converter", "get_batch_converter", "convert_rows", "render_rows"):
            if getattr(cls, hook) is not getattr(CSVFormat, hook):
                return f"{cls.__name__} overrides {hook}()"
        if cls.batch_converters is not CSVFormat.batch_converters:
            return f"{cls.__name__} overrides batch_converters"
        return None


def locale_delimiter() -> str:
    """Return the delimiter Excel expects in the active language: ``";"`` or ``","``.

    Excel splits CSV fields on the Windows list separator, which is ``;`` where the
    decimal separator is a comma (German, French, Spanish, Italian, Dutch...), since
    the comma is then part of numbers.  A server cannot see the client's Windows
    settings; the active language's ``DECIMAL_SEPARATOR``
    (:func:`django.utils.formats.get_format`, which follows ``LocaleMiddleware`` and
    ``translation.activate()``) is the signal it has: ``","`` gives ``";"``.
    """
    return ";" if formats.get_format("DECIMAL_SEPARATOR") == "," else ","


class ExcelCSVFormat(CSVFormat):
    """CSV that Excel opens right with a double click (``?format=csv-excel``, ``.csv``).

    :class:`CSVFormat` with a UTF-8 byte order mark (so Excel reads UTF-8, not the
    ANSI code page) and the delimiter of the active language (:func:`locale_delimiter`:
    ``;`` where decimals are written with a comma, else ``,``); CRLF line ends,
    formula escaping and every value as in CSV.  ``STREAMEXPORT_CSV_DELIMITER`` and
    ``STREAMEXPORT_CSV_BOM`` do not apply; the ``delimiter``, ``bom``,
    ``escape_formulas`` and ``header`` options do.  Values keep CSV's spelling: Excel
    in a decimal-comma locale reads ``1.5`` as text (or a date), which is why XLSX,
    with typed cells, is the better answer for Excel users.

    Not offered by default: add ``"django_streamexport.formats.csv.ExcelCSVFormat"`` to
    ``STREAMEXPORT_FORMATS`` or a view's ``format_classes``.
    """

    format = "csv-excel"

    def __init__(
        self,
        columns: Sequence[ResolvedColumn],
        *,
        delimiter: str | None = None,
        bom: bool = True,
        escape_formulas: bool | None = None,
        header: bool = True,
    ) -> None:
        super().__init__(
            columns,
            delimiter=locale_delimiter() if delimiter is None else delimiter,
            bom=bom,
            escape_formulas=escape_formulas,
            header=header,
        )
