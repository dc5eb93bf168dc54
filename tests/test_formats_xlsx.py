"""XLSX exports read back by openpyxl, calamine and LibreOffice, compared with the database.

Values are compared cell by cell with ``queryset.values_list()`` on PostgreSQL and SQLite
where the database matters (what its driver returns), and with plain tuples rendered by
:class:`XLSXFormat` alone where it does not.  The readers (``tests/spreadsheets.py``)
disagree in known ways, spelled out where they are compared:

* openpyxl does not decode ``_xHHHH_`` escapes (ECMA-376 Part 1 §22.9.2.19 ST_Xstring):
  its text is decoded here (:func:`decode_xstring`) before it is compared;
* openpyxl and calamine return date-time serials rounded to milliseconds, and calamine a
  ``date`` for one at midnight;
* LibreOffice's CSV shows cells as formatted (numbers to 15 significant digits, dates by
  their number format) and stores a cell's CR LF as LF.

Each LibreOffice start costs a second or two: the workbooks of the format-only tests are
converted together once per module (``libreoffice_books``), the database ones in one call.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import io
import json
import logging
import math
import re
import sys
import uuid
import weakref
import xml.etree.ElementTree as ET
import zipfile
import zoneinfo
from decimal import Decimal
from typing import Any

import openpyxl
import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils.duration import duration_iso_string
from python_calamine import CalamineError

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn, resolve_columns
from django_streamexport.exceptions import RowLimitExceeded
from django_streamexport.formats.xlsx import MAX_CELL_CHARS, XLSXFormat, sheet_name
from django_streamexport.plan import build_plan
from django_streamexport.streaming import ExportStream
from tests.conftest import DATABASES, body, both_databases, make_records, plan_stream, traced_peak
from tests.spreadsheets import (
    read_calamine,
    read_libreoffice_many,
    read_local_members,
    read_openpyxl,
    sheet_names,
    zip_facts,
)
from tests.testapp.models import Record
from tests.testapp.views import ALL_FIELDS, ALL_LABELS

MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
#: A one-sheet workbook's members, in the order the format's module docstring gives.
PARTS = [
    "_rels/.rels",
    "xl/styles.xml",
    "xl/worksheets/sheet1.xml",
    "xl/workbook.xml",
    "xl/_rels/workbook.xml.rels",
    "[Content_Types].xml",
]
LABELS = ALL_LABELS
LAST_COLUMN = "P"  # the 16th column
UTC = datetime.timezone.utc
PLUS_0530 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))

#: Texts a spreadsheet would evaluate if they were typed in, or written as formulas.
FORMULA_TEXTS = [
    "=1+1",
    "+1+1",
    "-1+1",
    "@SUM(1,1)",
    "=SUM(B2:B3)",
    '=HYPERLINK("http://example.com","click")',
    "=",
    "+",
    "-",
    "@",
    "==1",
    "'=1+1",
    "\t=1+1",
    " =1+1",
    "=1+1\n",
    "\r=1+1",
]
#: Texts with characters XML 1.0 forbids or Office escapes, and literal escapes.
FORBIDDEN_TEXTS = [
    "nul \x00 inside",
    "\x00",
    "\x01",
    "soh \x01, bs \x08, vt \x0b, ff \x0c, us \x1f",
    "\x08\x0b\x0c\x1f",
    "cr \r inside",
    "\r",
    "\r\n",
    "ends with cr\r",
    "crlf \r\n and lf \n and tab \t",
    "nonchar \ufffe and \uffff",
    "_x0041_",
    "_x0041__x0042_",
    "__x0041__",
    "_x005F_",
    "_x005F_x0041_",
    "_x0041_x0042_",
    "_x00e9_ lower hex",
    "_X0041_ upper X",
    "_x004_ short, _x00411_ long, _xGHIJ_ not hex",
    "\x00_x0000_\x00",
    "&amp; <b>not bold</b> ]]>",
]
_XSTRING_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


# --- helpers -----------------------------------------------------------------------------


def records(alias: str):
    return Record.objects.using(alias).order_by("id")


def export(queryset, fields=ALL_FIELDS, **options) -> tuple[bytes, tuple[ResolvedColumn, ...]]:
    """Return an XLSX export of ``queryset`` made as entry points make it, and its columns."""
    plan = build_plan(queryset, fields=fields, format="xlsx", **options)
    return b"".join(ExportStream(plan)), plan.columns


def database_rows(queryset, columns) -> list[list[Any]]:
    return [list(row) for row in queryset.values_list(*[column.lookup for column in columns])]


def column(kind: str, name: str = "value") -> ResolvedColumn:
    return ResolvedColumn(name=name, label=name.capitalize(), lookup=name, kind=kind)


def render(columns, rows, title="Values", **options) -> bytes:
    """Return the workbook the format alone makes of ``rows`` (plain tuples)."""
    fmt = XLSXFormat(columns, **options)
    fmt.title = title
    data = fmt.start()
    if rows:
        data += fmt.render_rows(rows)
    return data + fmt.end(rows=len(rows))


def decode_xstring(text: str) -> str:
    """Decode ECMA-376 ST_Xstring escapes (``_xHHHH_``; Part 1 §22.9.2.19), as Excel reads."""
    return _XSTRING_ESCAPE.sub(lambda match: chr(int(match.group(1), 16)), text)


def to_ms(value):
    """Round a datetime or time to milliseconds: the precision the readers return."""
    if isinstance(value, datetime.time):
        return to_ms(datetime.datetime.combine(datetime.date.min, value)).time()
    if isinstance(value, datetime.datetime):
        micro = value.microsecond
        return value + datetime.timedelta(microseconds=(micro + 500) // 1000 * 1000 - micro)
    return value


def as_datetime(cell: Any) -> Any:
    """Return calamine's cell of a date-time serial as a datetime.

    calamine returns a ``date`` for a serial without a fraction (midnight), whatever its
    number format; any other type is returned as it is, to fail the comparison.
    """
    if type(cell) is datetime.date:
        return datetime.datetime.combine(cell, datetime.time())
    return cell


def wall_time(value: datetime.datetime, zone: str) -> datetime.datetime:
    """Return the wall time of aware ``value`` in ``zone``, naive (Excel has no time zones)."""
    return value.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None)


def workbook_value(column: ResolvedColumn, value: Any, zone: str) -> Any:
    """Return what the cell of database ``value`` holds, by the format's documented rules.

    ``None`` for an empty cell, a Python number, bool, date, datetime or time for a typed
    cell, text (``str``) for a text cell; JSON columns give the decoded value (their text
    is parsed before comparing).
    """
    if value is None:
        return None
    if column.choices is not None:
        return str(dict(column.choices).get(value, value))
    kind = column.kind
    if kind == kinds.INTEGER:
        return value if -(10**15) < value < 10**15 else str(value)
    if kind == kinds.DECIMAL:
        return float(value) if value.is_finite() else str(value)
    if kind == kinds.FLOAT:
        return value if math.isfinite(value) else repr(value)
    if kind == kinds.DATETIME:
        local = wall_time(value, zone) if value.tzinfo is not None else value
        return local if local >= datetime.datetime(1900, 3, 1) else local.isoformat()
    if kind == kinds.DATE:
        return value if value >= datetime.date(1900, 3, 1) else value.isoformat()
    if kind == kinds.DURATION:
        return duration_iso_string(value)
    if kind in (kinds.UUID, kinds.OTHER):
        return str(value)
    return value  # text, booleans, times, JSON


def typed(value: Any) -> tuple[str, Any]:
    """Return ``value`` tagged with its cell type, so ``True`` never equals ``1.0``."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, datetime.datetime):
        return ("datetime", to_ms(value))
    if isinstance(value, (datetime.date, datetime.time)):
        return (type(value).__name__, to_ms(value))
    if isinstance(value, str):
        return ("text", value)
    return ("json", value)


def calamine_expected(columns, rows, zone) -> list[list[tuple[str, Any]]]:
    """Return ``rows`` of database values as calamine reads their cells (``""`` when empty)."""
    result = []
    for row in rows:
        cells = [workbook_value(c, v, zone) for c, v in zip(columns, row, strict=True)]
        result.append([typed("" if cell is None else cell) for cell in cells])
    return result


def openpyxl_expected(columns, rows, zone) -> list[list[tuple[str, Any]]]:
    """Return ``rows`` as openpyxl reads them: ``None`` when empty, dates as datetimes."""
    result = []
    for row in rows:
        cells = []
        for column_, value in zip(columns, row, strict=True):
            cell = workbook_value(column_, value, zone)
            if type(cell) is datetime.date:
                cell = datetime.datetime.combine(cell, datetime.time())
            cells.append(("empty", None) if cell is None else typed(cell))
        result.append(cells)
    return result


def read_back(columns, sheet_rows, *, openpyxl_text: bool = False) -> list[list[tuple[str, Any]]]:
    """Tag a reader's data rows; JSON columns parsed, openpyxl's text decoded (see module)."""
    result = []
    for row in sheet_rows:
        cells = []
        for column_, cell in zip(columns, row, strict=True):
            if column_.kind == kinds.JSON and isinstance(cell, str) and cell:
                cells.append(("json", json.loads(cell)))
            elif cell is None:
                cells.append(("empty", None))
            elif column_.kind == kinds.DATETIME and type(cell) is datetime.date:
                # calamine returns a date for a date-time serial without a fraction.
                cells.append(typed(datetime.datetime.combine(cell, datetime.time())))
            elif openpyxl_text and isinstance(cell, str):
                cells.append(("text", decode_xstring(cell)))
            else:
                cells.append(typed(cell))
        result.append(cells)
    return result


def libreoffice_cell(column: ResolvedColumn, value: Any, zone: str) -> tuple[str, Any]:
    """Return database ``value`` as LibreOffice's CSV shows its cell (formatted text)."""
    cell = workbook_value(column, value, zone)
    if cell is None:
        return ("text", "")
    if isinstance(cell, bool):
        return ("text", "TRUE" if cell else "FALSE")
    if isinstance(cell, (int, float)):
        return ("number", float(f"{cell:.12g}"))
    if isinstance(cell, datetime.datetime):
        return ("text", f"{cell:%Y-%m-%d %H:%M:%S}")
    if isinstance(cell, datetime.date):
        return ("text", cell.isoformat())
    if isinstance(cell, datetime.time):
        return ("text", f"{cell:%H:%M:%S}")
    if isinstance(cell, str):
        return ("text", cell.replace("\r\n", "\n"))  # Calc keeps a cell's line breaks as LF
    return ("json", cell)


def libreoffice_read_back(columns, rows, zone, csv_rows) -> list[list[tuple[str, Any]]]:
    """Tag LibreOffice's CSV cells like :func:`libreoffice_cell` tags the expected ones."""
    result = []
    for row, csv_row in zip(rows, csv_rows, strict=True):
        cells = []
        for column_, value, text in zip(columns, row, csv_row, strict=True):
            kind = libreoffice_cell(column_, value, zone)[0]
            if kind == "number" and text:
                cells.append(("number", float(f"{float(text):.12g}")))
            elif kind == "json" and text:
                cells.append(("json", json.loads(text)))
            else:
                cells.append(("text", text))
        result.append(cells)
    return result


def assert_same_rows(got: list[list[Any]], expected: list[list[Any]], reader: str) -> None:
    assert len(got) == len(expected), f"{reader}: {len(got)} data rows, expected {len(expected)}"
    for number, (got_row, expected_row) in enumerate(zip(got, expected, strict=True), 2):
        assert got_row == expected_row, f"{reader}, sheet row {number}"


def assert_unreadable(data: bytes) -> None:
    """A cut workbook: no end of central directory, so no reader opens it."""
    assert data.startswith(b"PK\x03\x04")
    assert b"PK\x05\x06" not in data
    with pytest.raises(zipfile.BadZipFile):
        openpyxl.load_workbook(io.BytesIO(data), read_only=True)
    with pytest.raises(CalamineError):
        read_calamine(data)


def defined_names(data: bytes) -> tuple[str, list[tuple[str | None, ...]]]:
    """Return the text directly inside ``<definedNames>`` and its ``<definedName>`` children."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        workbook = ET.fromstring(archive.read("xl/workbook.xml"))
    names = workbook.find(f"{MAIN}definedNames")
    assert names is not None, "workbook.xml has no definedNames"
    children = [
        (child.tag, child.get("name"), child.get("localSheetId"), child.get("hidden"), child.text)
        for child in names
    ]
    return (names.text or ""), children


# --- the records of make_records, read back --------------------------------------------


@both_databases
def test_records_read_back_equal_in_calamine_and_openpyxl(db_alias):
    make_records(db_alias)
    queryset = records(db_alias)
    data, columns = export(queryset)
    rows = database_rows(queryset, columns)
    zone = settings.TIME_ZONE

    (calamine,) = read_calamine(data)
    assert calamine[0] == LABELS
    assert_same_rows(
        read_back(columns, calamine[1:]), calamine_expected(columns, rows, zone), "calamine"
    )

    # Spelled out: choices as their labels, JSON as compact JSON text.
    assert {row[3] for row in calamine[1:]} == {"Draft", "Published"}
    assert calamine[2][13] == '{"i":1,"text":"comma, inside","nested":[1,"=2",null]}'

    (openpyxl_rows,) = read_openpyxl(data)
    assert openpyxl_rows[0] == LABELS
    assert_same_rows(
        read_back(columns, openpyxl_rows[1:], openpyxl_text=True),
        openpyxl_expected(columns, rows, zone),
        "openpyxl",
    )


@both_databases
def test_records_read_back_equal_in_libreoffice(tmp_path):
    """Both databases' exports and an empty one, converted in one LibreOffice run."""
    exports = []
    for alias in DATABASES:
        make_records(alias)
        queryset = records(alias)
        data, columns = export(queryset)
        exports.append((alias, data, columns, database_rows(queryset, columns)))
    empty, columns = export(records("default").filter(pk__lt=0))
    exports.append(("empty", empty, columns, []))

    converted = read_libreoffice_many([data for _, data, _, _ in exports], tmp_path)
    zone = settings.TIME_ZONE
    for (alias, _, columns, rows), csv_rows in zip(exports, converted, strict=True):
        assert csv_rows[0] == LABELS, alias
        expected = [
            [libreoffice_cell(c, v, zone) for c, v in zip(columns, row, strict=True)]
            for row in rows
        ]
        got = libreoffice_read_back(columns, rows, zone, csv_rows[1:])
        assert_same_rows(got, expected, f"LibreOffice ({alias})")


# --- never a formula ---------------------------------------------------------------------


def test_text_that_looks_like_a_formula_stays_that_text():
    data = render([column(kinds.TEXT, "text")], [(text,) for text in FORMULA_TEXTS])
    (calamine,) = read_calamine(data)
    assert [row[0] for row in calamine[1:]] == FORMULA_TEXTS
    (openpyxl_rows,) = read_openpyxl(data)
    assert [decode_xstring(row[0]) for row in openpyxl_rows[1:]] == FORMULA_TEXTS

    sheet = openpyxl.load_workbook(io.BytesIO(data)).worksheets[0]
    for (cell,) in sheet.iter_rows(min_row=2):
        assert cell.data_type == "s", cell.value  # a string, not a formula ("f")
        assert not cell.quotePrefix  # no hidden ' prefix either
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sheet_xml = ET.fromstring(archive.read("xl/worksheets/sheet1.xml"))
    assert sheet_xml.findall(f".//{MAIN}f") == []  # no formula element anywhere
    cells = sheet_xml.findall(f".//{MAIN}sheetData/{MAIN}row/{MAIN}c")
    assert {cell.get("t") for cell in cells} == {"inlineStr"}


def test_libreoffice_computes_nothing(libreoffice_books):
    """Calc shows the text itself: ``=1+1`` is not 2, ``-1+1`` not 0."""
    rows = libreoffice_books["formulas"]
    assert rows[0] == ["Text"]
    assert [row[0] for row in rows[1:]] == [text.replace("\r\n", "\n") for text in FORMULA_TEXTS]


# --- characters XML forbids and literal escapes ----------------------------------------


def test_forbidden_characters_and_literal_escapes_round_trip():
    data = render([column(kinds.TEXT, "text")], [(text,) for text in FORBIDDEN_TEXTS])
    (calamine,) = read_calamine(data)
    for text, (got,) in zip(FORBIDDEN_TEXTS, calamine[1:], strict=True):
        # calamine (0.5.4 to 0.9.1 at least) leaves the escapes of the non-characters
        # U+FFFE and U+FFFF as written (it decodes every other); LibreOffice decodes all.
        assert got in (text, text.replace("\ufffe", "_xFFFE_").replace("\uffff", "_xFFFF_"))
    # openpyxl returns the stored text: decoding it as Excel does gives the text back.
    (openpyxl_rows,) = read_openpyxl(data)
    assert [decode_xstring(row[0]) for row in openpyxl_rows[1:]] == FORBIDDEN_TEXTS
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sheet_xml = archive.read("xl/worksheets/sheet1.xml").decode("utf-8")
    ET.fromstring(sheet_xml)  # well-formed: nothing XML 1.0 forbids is written raw
    assert "\r" not in sheet_xml  # CR is escaped too ([MS-OI29500] 2.1.1747)
    assert "_x005F_x0041_" in sheet_xml  # a literal _x0041_ has its underscore escaped


def test_forbidden_characters_in_libreoffice(libreoffice_books):
    rows = libreoffice_books["forbidden"]
    assert len(rows) == len(FORBIDDEN_TEXTS) + 1
    for text, (got,) in zip(FORBIDDEN_TEXTS, rows[1:], strict=True):
        text = text.replace("\r\n", "\n")
        # LibreOffice 7.4 also decodes "_x004_", three hex digits, which ST_Xstring does
        # not make an escape (so the format leaves it as it is): both readings pass.
        assert got in (text, text.replace("_x004_", "\x04")), (text, got)


@pytest.mark.parametrize("text", ["_x005F_x0041_", "_x0041_x0042_", "a_x0000_x0000_x0000_b"])
def test_literal_escapes_sharing_an_underscore_round_trip(text):
    data = render([column(kinds.TEXT, "text")], [(text,)])
    assert read_calamine(data)[0][1] == [text]
    assert decode_xstring(read_openpyxl(data)[0][1][0]) == text


def test_lone_surrogates_keep_the_workbook_well_formed():
    """A lone surrogate cannot be encoded: it is escaped, and the escape read as written."""
    data = render([column(kinds.TEXT, "text")], [("a\ud800b",), ("\udfff",), ("after",)])
    (calamine,) = read_calamine(data)
    assert [row[0] for row in calamine[1:]] == ["a_xD800_b", "_xDFFF_", "after"]


@both_databases
def test_forbidden_characters_from_the_database(db_alias):
    """PostgreSQL text cannot hold NUL (SQLite can): the rest on both databases."""
    texts = [t for t in FORBIDDEN_TEXTS if db_alias == "sqlite" or "\x00" not in t]
    Record.objects.using(db_alias).bulk_create([Record(title=t, body=t * 2) for t in texts])
    queryset = records(db_alias)
    data, columns = export(queryset, fields=["id", "title", "body"])
    rows = database_rows(queryset, columns)
    assert [row[1] for row in rows] == texts  # the database kept them
    (calamine,) = read_calamine(data)
    for row, got in zip(rows, calamine[1:], strict=True):
        for text, cell in zip(row[1:], got[1:], strict=True):
            spelled = text.replace("\ufffe", "_xFFFE_").replace("\uffff", "_xFFFF_")
            assert cell in (text, spelled), (text, cell)
    (openpyxl_rows,) = read_openpyxl(data)
    assert [[decode_xstring(cell) for cell in row[1:]] for row in openpyxl_rows[1:]] == [
        row[1:] for row in rows
    ]


# --- the cell limit ----------------------------------------------------------------------


def test_text_over_the_cell_limit_is_cut_and_logged(caplog):
    long = "0123456789" * 4_000  # 40,000 characters
    escaped_at_the_cut = "a" * (MAX_CELL_CHARS - 1) + "\x01" + "b" * 100
    exact = "x" * MAX_CELL_CHARS
    rows = [(long,), (escaped_at_the_cut,), (exact,), ("short",)]
    with caplog.at_level(logging.WARNING, logger="django_streamexport"):
        data = render([column(kinds.TEXT, "text")], rows)
    (calamine,) = read_calamine(data)
    got = [row[0] for row in calamine[1:]]
    assert got == [long[:MAX_CELL_CHARS], escaped_at_the_cut[:MAX_CELL_CHARS], exact, "short"]
    assert len(got[0]) == 32_767
    warnings = [r for r in caplog.records if "were cut" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert re.search(r"\b2\b", warnings[0].getMessage()), warnings[0].getMessage()


def test_text_at_the_cell_limit_logs_nothing(caplog):
    with caplog.at_level(logging.WARNING, logger="django_streamexport"):
        data = render([column(kinds.TEXT, "text")], [("x" * MAX_CELL_CHARS,)])
    assert read_calamine(data)[0][1] == ["x" * MAX_CELL_CHARS]
    assert not [r for r in caplog.records if "were cut" in r.getMessage()]


@both_databases
def test_long_text_from_the_database_is_cut_and_logged(db_alias, caplog):
    long = "".join(f"{i:05d} é\n" for i in range(6_000))[:40_000]
    Record.objects.using(db_alias).create(title="long", body=long)
    with caplog.at_level(logging.WARNING, logger="django_streamexport"):
        data, _ = export(records(db_alias), fields=["id", "body"])
    (calamine,) = read_calamine(data)
    assert calamine[1][1] == long[:MAX_CELL_CHARS]
    assert len([r for r in caplog.records if "were cut" in r.getMessage()]) == 1


# --- texts of a batch escaped at once ---------------------------------------------------

#: Texts that need entities, ``xml:space``, ``_x005F_`` or nothing, with empty ones.
BATCH_TEXTS = [
    "plain", "", " lead", "trail ", "\tboth\t", "\nlf\n", "mid dle", "a\nb", "&", "<b>", ">",
    "&amp;", "_x0041_", "_x0041__x0042_", "__x0041__", "_x00e9_", "_X0041_", "_x004_",
    "é 東京 😀", " 😀", "😀 ", "a & b < c > d _x1234_ ", "=1+1", "\t", " ", "\n",
]  # fmt: skip


@pytest.mark.parametrize("start", range(0, len(BATCH_TEXTS), 5))
@pytest.mark.parametrize("ascii_only", [False, True], ids=["unicode", "ascii"])
def test_a_batch_of_texts_is_escaped_as_text_by_text(start, ascii_only):
    """The C-level batch escaping gives each cell :meth:`XLSXFormat.text_cell` gives
    (ASCII batches are classified by ``bytes.translate``, the others by a regex)."""
    fmt = XLSXFormat([column(kinds.TEXT, "text")])
    texts = BATCH_TEXTS[start:] + BATCH_TEXTS[:start]
    if ascii_only:
        texts = [text for text in texts if text.isascii()]
    # Without whitespace at an edge, too (the batch then skips the test per text).
    plain = [text.strip(" \t\n") for text in texts]
    assert fmt._batch_text_cells(plain) == [fmt.text_cell(text) for text in plain]
    assert fmt._batch_text_cells(texts) == [fmt.text_cell(text) for text in texts]
    with_nulls = [None, *texts[:3], None, *texts[3:], None]
    assert fmt._text_cells(with_nulls) == [
        "<c/>" if text is None else fmt.text_cell(text) for text in with_nulls
    ]


@pytest.mark.parametrize(
    "texts",
    [["a", "trail ", "b"], ["a", " lead", "b"], ["a", "tab\t"], ["\nlf", "b"], ["a", "\n"],
     ["é", "trail ", "b"], ["é", "\tlead", "b"], ["last "], [" first", "b"], ["", " ", ""]],
)  # fmt: skip
def test_whitespace_at_one_edge_of_one_text_of_a_batch_is_preserved(texts):
    fmt = XLSXFormat([column(kinds.TEXT, "text")])
    assert fmt._batch_text_cells(texts) == [fmt.text_cell(text) for text in texts]


@pytest.mark.parametrize(
    "texts",
    [["ok", "nul \x00"], ["ok", "cr \r"], ["ok", "\x01"], ["ok", "x" * (MAX_CELL_CHARS + 1)],
     ["ok", "\ud800"], ["ok", 5]],
)  # fmt: skip
def test_a_batch_with_a_text_needing_more_is_written_text_by_text(texts):
    fmt = XLSXFormat([column(kinds.TEXT, "text")])
    assert fmt._batch_text_cells(texts) is None
    assert fmt._text_cells(texts) == [fmt.text_cell(str(text)) for text in texts]


def test_batch_texts_read_back_unchanged():
    rows = [(text,) for text in [*BATCH_TEXTS, None, "é"]]
    data = render([column(kinds.TEXT, "text")], rows)
    (calamine,) = read_calamine(data)
    assert [row[0] for row in calamine[1:]] == ["" if text is None else text for (text,) in rows]
    (openpyxl_rows,) = read_openpyxl(data)
    assert [decode_xstring(row[0] or "") for row in openpyxl_rows[1:]] == [
        "" if text is None else text for (text,) in rows
    ]


# --- cells spelled by PostgreSQL ---------------------------------------------------------

#: Floats and decimals whose spelling differs between PostgreSQL and Python, or is text.
SPELLED_FLOATS = [
    0.1, 1 / 3, -2.5, 100.0, -0.0, 0.0, 1e-05, 1.5e-07, 123456789012345.6, 1e15, -1e15,
    1e15 + 0.5, 9999999999999998.0, 1e16, 1.7976931348623157e308, 5e-324,
    math.inf, -math.inf, math.nan, None,
]  # fmt: skip
SPELLED_DECIMALS = [
    Decimal("0.00"), Decimal("-1234.50"), Decimal("9999999999.99"), Decimal("0.01"), None,
]  # fmt: skip
SPELLED_FIELDS = ["id", "title", "count", "amount", "ratio", "flag", "created", "day", "at"]


def spelled_records(alias: str) -> None:
    tz_plus = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    Record.objects.using(alias).bulk_create(
        Record(
            title=BATCH_TEXTS[i % len(BATCH_TEXTS)],
            count=None if i % 4 == 0 else (-1) ** i * i * 10**7,
            amount=SPELLED_DECIMALS[i % len(SPELLED_DECIMALS)],
            ratio=ratio,
            flag=(None, True, False)[i % 3],
            created=None
            if i % 5 == 0
            else datetime.datetime(1899, 12, 31, 23, 30, tzinfo=tz_plus)
            + datetime.timedelta(days=i * 997, microseconds=i * 7),
            day=datetime.date(1900, 2, 25) + datetime.timedelta(days=i * 3),
            at=datetime.time(i % 24, 59, 59, 999999),
        )
        for i, ratio in enumerate(SPELLED_FLOATS * 2)
    )
    # Django refuses to save a NaN decimal; PostgreSQL stores one.
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"UPDATE {Record._meta.db_table} SET amount = 'NaN'"
            f" WHERE id IN (SELECT id FROM {Record._meta.db_table} ORDER BY id LIMIT 3)"
        )


def xlsx_streams(alias: str, fields=SPELLED_FIELDS, export_format=None, **options):
    """Return (Python path, database formatting) streams of ``fields`` of the records."""
    queryset = records(alias)
    columns = resolve_columns(queryset, fields)
    made = export_format or XLSXFormat
    return [
        plan_stream(queryset, columns, made(columns), database_formatting=on, **options)
        for on in (False, True)
    ]


def members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("chunk_size", [7, 2000])
def test_cells_spelled_by_postgresql_equal_the_python_path_byte_for_byte(chunk_size):
    spelled_records("default")
    python, database = xlsx_streams("default", chunk_size=chunk_size)
    assert not python.reader.text_cells
    assert database.reader.text_cells
    assert "cells spelled by PostgreSQL" in database.reader.reason
    expected, got = members(b"".join(python)), members(b"".join(database))
    assert got == expected
    sheet = expected["xl/worksheets/sheet1.xml"].decode()
    # The awkward spellings are there: text cells for NaN and infinities, repr() numbers.
    for text in ("<t>nan</t>", "<t>inf</t>", "<t>-inf</t>", "<t>NaN</t>",
                 "<v>1e-05</v>", "<v>1000000000000000.0</v>", "<v>1e+16</v>",
                 "<v>9999999999.99</v>", "<v>0.00</v>"):  # fmt: skip
        assert text in sheet, text
    # psycopg2 sends -0.0 as the literal -0.0, a numeric, which has no negative zero:
    # PostgreSQL stores 0 then.  Where the database holds -0, both paths write it so.
    ratios = Record.objects.values_list("ratio", flat=True)
    if any(r == 0 and math.copysign(1.0, r) < 0 for r in ratios if r is not None):
        assert "<v>-0.0</v>" in sheet
    (calamine,) = read_calamine(b"".join(xlsx_streams("default")[1]))
    assert len(calamine) == 1 + 2 * len(SPELLED_FLOATS)


#: Instants around a power of two of Unix seconds (2**30: 2004-01-10 13:37:04 UTC), with
#: microseconds; midnights; daylight saving changes; Lord Howe's half-hour one.
SPELLED_INSTANTS = (
    [
        datetime.datetime(2004, 1, 10, 13, 37, 4, tzinfo=UTC) + datetime.timedelta(microseconds=m)
        # Added to the offset, these cross 2**30 where the sum of the rounded seconds and the
        # offset rounds differently from the exact wall time (+01:00, -05:00, +05:30).
        for m in (-3_599_999_997, -1, 0, 2, 3, 999_999, -19_799_999_993)
    ]
    + [
        datetime.datetime(2020, 1, 1, tzinfo=zoneinfo.ZoneInfo(zone))
        for zone in ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
    ]
    + [
        datetime.datetime(2021, 3, 28, 0, 59, 59, 999_999, tzinfo=UTC),
        datetime.datetime(2021, 3, 28, 1, 0, 0, 1, tzinfo=UTC),
        datetime.datetime(2021, 10, 31, 0, 30, 0, 123_456, tzinfo=UTC),
        datetime.datetime(2021, 4, 3, 14, 45, 0, 1, tzinfo=UTC),  # Lord Howe: 02:00 -> 01:30
        datetime.datetime(2021, 10, 2, 15, 15, 59, tzinfo=UTC),  # Lord Howe: 02:00 -> 02:30
        datetime.datetime(1900, 3, 1, 12, tzinfo=UTC),
        datetime.datetime(1900, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime.datetime(2300, 7, 1, 0, 0, 0, 1, tzinfo=UTC),
        None,
    ]
)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "zone", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
)
@pytest.mark.parametrize("chunk_size", [1, 2000])
def test_datetimes_spelled_by_postgresql_equal_the_python_path(zone, chunk_size):
    Record.objects.bulk_create(
        Record(created=instant, ratio=float(i)) for i, instant in enumerate(SPELLED_INSTANTS)
    )
    python, database = xlsx_streams(
        "default", ["id", "created"], lambda c: XLSXFormat(c, time_zone=zone), chunk_size=chunk_size
    )
    assert database.reader.text_cells
    expected, got = members(b"".join(python)), members(b"".join(database))
    assert got == expected
    sheet = expected["xl/worksheets/sheet1.xml"].decode()
    assert "<t>1900-02-28T" in sheet or zone != "UTC"
    if zone == "UTC":
        assert '<c s="3"><v>43831</v></c>' in sheet  # a midnight: a whole number, no ".0"


@pytest.mark.django_db(transaction=True)
def test_cells_spelled_by_postgresql_across_sheets_and_a_row_limit():
    spelled_records("default")
    python, database = xlsx_streams(
        "default", ["id", "ratio", "amount"], lambda c: XLSXFormat(c, max_sheet_rows=7)
    )
    assert database.reader.text_cells
    assert members(b"".join(database)) == members(b"".join(python))
    limited = xlsx_streams("default", ["id", "ratio"], max_rows=5)[1]
    with pytest.raises(RowLimitExceeded):
        b"".join(limited)
    assert limited.rows == 5


class _OwnTexts(XLSXFormat):
    def get_cell_writer(self, column):
        return super().get_cell_writer(column)


class _OwnTextCells(XLSXFormat):
    def text_cell(self, value):  # NaN and infinities, spelled in SQL otherwise
        return super().text_cell(value.upper())


class _PythonCells(XLSXFormat):
    def database_cells(self):
        return [False] * len(self.columns)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "fields, export_format, reason",
    [
        (SPELLED_FIELDS, _OwnTexts, "_OwnTexts overrides get_cell_writer"),
        (SPELLED_FIELDS, _OwnTextCells, "_OwnTextCells overrides text_cell"),
        (SPELLED_FIELDS, _PythonCells, "no column is a decimal, a float or a datetime"),
        (["id", "title", "day"], XLSXFormat, "no column is a decimal, a float or a datetime"),
        (["id", "ratio", "data"], XLSXFormat, "Django converts the values of column 'data'"),
    ],
)
def test_database_formatting_of_xlsx_falls_back_with_a_reason(fields, export_format, reason):
    spelled_records("default")
    python, database = xlsx_streams("default", fields, export_format)
    assert not database.reader.text_cells
    assert reason in database.reader.reason
    assert members(b"".join(database)) == members(b"".join(python))


@pytest.mark.django_db(transaction=True)
def test_xlsx_reads_through_the_cursor_whatever_copy_mode_says():
    """COPY is CSV's reader only: XLSX never considers it, and its reason does not name it."""
    spelled_records("default")
    queryset = records("default")
    columns = resolve_columns(queryset, SPELLED_FIELDS)
    stream = plan_stream(queryset, columns, XLSXFormat(columns), copy_mode=True)
    assert stream.reader.name != "copy"
    assert "COPY" not in stream.reader.reason
    assert stream.reader.reason.startswith("cells spelled by PostgreSQL")
    assert stream.reader.text_cells  # database formatting still spells some cells


# --- dates, times, numbers, booleans ----------------------------------------------------

XLSX_SYDNEY = {"STREAMEXPORT_XLSX_TIME_ZONE": "Australia/Sydney"}
#: (XLSX options, settings, plan options, the zone of the wall times)
ZONE_CASES = [
    pytest.param({}, {}, {}, "America/New_York", id="TIME_ZONE"),
    pytest.param({"time_zone": "Asia/Kolkata"}, {}, {}, "Asia/Kolkata", id="option"),
    pytest.param({}, XLSX_SYDNEY, {}, "Australia/Sydney", id="setting"),
    pytest.param(
        {"time_zone": "Asia/Kolkata"}, XLSX_SYDNEY, {}, "Asia/Kolkata", id="option-over-setting"
    ),
    # The export's time zone (STREAMEXPORT_TIME_ZONE, the plan's time_zone) when XLSX has none.
    pytest.param(
        {}, {"STREAMEXPORT_TIME_ZONE": "Asia/Kolkata"}, {}, "Asia/Kolkata", id="export-setting"
    ),
    pytest.param({}, {}, {"time_zone": "Asia/Kolkata"}, "Asia/Kolkata", id="export-option"),
    pytest.param(
        {},
        {"STREAMEXPORT_TIME_ZONE": "Europe/Berlin"},
        {"time_zone": "Asia/Kolkata"},
        "Asia/Kolkata",
        id="export-option-over-export-setting",
    ),
    pytest.param({}, XLSX_SYDNEY, {"time_zone": "Asia/Kolkata"}, "Australia/Sydney", id="xlsx-own"),
    pytest.param(
        {"time_zone": "Australia/Sydney"},
        {},
        {"time_zone": "Asia/Kolkata"},
        "Australia/Sydney",
        id="xlsx-option-over-export",
    ),
]
#: Aware datetimes around both zones' DST changes, a leap day, far dates; whole milliseconds.
MOMENTS = [
    *(
        datetime.datetime(2024, 3, 10, 5, 0, tzinfo=UTC) + datetime.timedelta(minutes=20 * i)
        for i in range(10)  # New York springs forward at 07:00 UTC
    ),
    *(
        datetime.datetime(2024, 4, 6, 15, 10, tzinfo=UTC) + datetime.timedelta(minutes=20 * i)
        for i in range(8)  # Sydney falls back at 16:00 UTC
    ),
    datetime.datetime(2024, 2, 29, 23, 59, 59, 999_000, tzinfo=UTC),
    datetime.datetime(2013, 1, 1, 5, 30, 15, 123_000, tzinfo=PLUS_0530),
    datetime.datetime(1970, 1, 1, tzinfo=UTC),
    datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime.datetime(1950, 6, 15, 12, 0, tzinfo=UTC),
    datetime.datetime(2999, 12, 31, 12, 0, tzinfo=UTC),
]


@both_databases
@pytest.mark.parametrize(("format_options", "setting", "plan_options", "zone"), ZONE_CASES)
def test_datetimes_are_serials_in_the_export_time_zone(
    db_alias, format_options, setting, plan_options, zone
):
    Record.objects.using(db_alias).bulk_create(
        [Record(title=str(i), created=m) for i, m in enumerate(MOMENTS)]
    )
    queryset = records(db_alias)
    with override_settings(**setting):
        data, columns = export(
            queryset, fields=["id", "created"], format_options=format_options, **plan_options
        )
    rows = database_rows(queryset, columns)
    assert [row[1] for row in rows] == MOMENTS  # the database kept each instant
    (calamine,) = read_calamine(data)
    got = [as_datetime(row[1]) for row in calamine[1:]]
    assert got == [to_ms(wall_time(moment, zone)) for moment in MOMENTS]
    (openpyxl_rows,) = read_openpyxl(data)
    assert [row[1] for row in openpyxl_rows[1:]] == got


@both_databases
def test_dates_and_times_from_the_database(db_alias):
    days = [
        datetime.date(1900, 3, 1),
        datetime.date(1900, 2, 28),
        datetime.date(1899, 12, 31),
        datetime.date(2024, 2, 29),
        datetime.date(9999, 12, 31),
        datetime.date(1, 1, 1),
    ]
    times = [
        datetime.time(0, 0),
        datetime.time(23, 59, 59),
        datetime.time(12, 0, 0, 123_000),
        datetime.time(6, 7, 8),
        None,
        datetime.time(0, 0, 0, 1_000),
    ]
    Record.objects.using(db_alias).bulk_create(
        [Record(title="d", day=day, at=at) for day, at in zip(days, times, strict=True)]
    )
    queryset = records(db_alias)
    data, columns = export(queryset, fields=["id", "day", "at"])
    rows = database_rows(queryset, columns)
    assert [row[1:] for row in rows] == [list(pair) for pair in zip(days, times, strict=True)]
    (calamine,) = read_calamine(data)
    assert_same_rows(
        read_back(columns, calamine[1:]), calamine_expected(columns, rows, "UTC"), "calamine"
    )
    assert [row[1] for row in calamine[1:]] == [
        datetime.date(1900, 3, 1),
        "1900-02-28",
        "1899-12-31",
        datetime.date(2024, 2, 29),
        datetime.date(9999, 12, 31),
        "0001-01-01",
    ]
    (openpyxl_rows,) = read_openpyxl(data)
    assert_same_rows(
        read_back(columns, openpyxl_rows[1:], openpyxl_text=True),
        openpyxl_expected(columns, rows, "UTC"),
        "openpyxl",
    )


@pytest.mark.parametrize(
    ("zone", "change"),
    [
        # 02:00 NST (-03:30) becomes 03:00 NDT (-02:30).
        ("America/St_Johns", datetime.datetime(2024, 3, 10, 5, 30, tzinfo=UTC)),
        # 02:00 (+10:30) becomes 02:30 (+11:00).
        ("Australia/Lord_Howe", datetime.datetime(2024, 10, 5, 15, 30, tzinfo=UTC)),
        # 1941-10-01 00:00 IST (+05:30) becomes 01:00 (+06:30).
        ("Asia/Kolkata", datetime.datetime(1941, 9, 30, 18, 30, tzinfo=UTC)),
    ],
)
def test_datetimes_across_an_offset_change_at_half_past_a_utc_hour(zone, change):
    """Zones whose offset changes at hh:30 UTC: no offset holds for the whole UTC hour."""
    moments = [change + datetime.timedelta(minutes=10 * i) for i in range(-4, 5)]
    moments.insert(4, change - datetime.timedelta(microseconds=1000))
    data = render([column(kinds.DATETIME, "moment")], [(m,) for m in moments], time_zone=zone)
    got = [row[0] for row in read_calamine(data)[0][1:]]
    assert got == [to_ms(wall_time(moment, zone)) for moment in moments]


def test_dates_and_datetimes_before_1900_03_01_are_text():
    """The 1900 date system counts a 1900-02-29 that never was: earlier dates are text."""
    columns = [column(kinds.DATE, "day"), column(kinds.DATETIME, "moment")]
    rows = [
        (datetime.date(1900, 3, 1), datetime.datetime(1900, 3, 1, 0, 0, 1, tzinfo=UTC)),
        (datetime.date(1900, 2, 28), datetime.datetime(1900, 2, 28, 23, 59, 59, tzinfo=UTC)),
        (datetime.date(1899, 12, 31), datetime.datetime(1899, 12, 30, 12, 0, tzinfo=UTC)),
        (datetime.date(1, 1, 1), datetime.datetime(1, 1, 1, 0, 0, tzinfo=UTC)),
        (datetime.date(9999, 12, 31), datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        (datetime.date(1900, 2, 28), datetime.datetime(1900, 2, 28, 23, 59, 59)),  # naive
        (datetime.date(1900, 3, 1), datetime.datetime(1900, 3, 1, 6, 30)),  # naive
    ]
    data = render(columns, rows, time_zone="UTC")
    assert read_calamine(data)[0][1:] == [
        [datetime.date(1900, 3, 1), datetime.datetime(1900, 3, 1, 0, 0, 1)],
        ["1900-02-28", "1900-02-28T23:59:59"],
        ["1899-12-31", "1899-12-30T12:00:00"],
        ["0001-01-01", "0001-01-01T00:00:00"],
        [datetime.date(9999, 12, 31), datetime.datetime(9999, 12, 31, 23, 59, 59)],
        ["1900-02-28", "1900-02-28T23:59:59"],
        [datetime.date(1900, 3, 1), datetime.datetime(1900, 3, 1, 6, 30)],
    ]


def test_a_wall_time_before_1900_03_01_is_text_whatever_the_instant():
    """The test is on the wall time in the export's zone, not on the UTC instant."""
    moment = datetime.datetime(1900, 3, 1, 2, 0, tzinfo=UTC)
    data = render([column(kinds.DATETIME, "moment")], [(moment,)], time_zone="America/New_York")
    assert read_calamine(data)[0][1] == ["1900-02-28T21:00:00"]


VALUE_COLUMNS = [
    column(kinds.BOOLEAN, "flag"),
    column(kinds.INTEGER, "number"),
    column(kinds.DECIMAL, "amount"),
    column(kinds.FLOAT, "ratio"),
    column(kinds.DATE, "day"),
    column(kinds.DATETIME, "moment"),
    column(kinds.TIME, "at"),
]
VALUE_ROWS = [
    (
        True,
        999_999_999_999_999,
        Decimal("-1234.50"),
        0.1,
        datetime.date(1900, 3, 1),
        datetime.datetime(1900, 3, 1, 0, 0, 1, tzinfo=UTC),
        datetime.time(0, 0),
    ),
    (
        False,
        10**15,
        Decimal("0.1"),
        -2.5,
        datetime.date(1900, 2, 28),
        datetime.datetime(1900, 2, 28, 23, 59, 59, tzinfo=UTC),
        datetime.time(23, 59, 59),
    ),
    (
        True,
        -(10**15),
        Decimal("12345678901234567890.5"),
        1e300,
        datetime.date(1, 1, 1),
        datetime.datetime(2024, 2, 29, 12, 30, tzinfo=UTC),
        datetime.time(12, 0, 0, 250_000),
    ),
    (
        False,
        -999_999_999_999_999,
        Decimal("NaN"),
        float("inf"),
        datetime.date(9999, 12, 31),
        datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime.time(6, 7, 8),
    ),
    (
        True,
        2**63 - 1,
        Decimal("1E+3"),
        float("-inf"),
        datetime.date(2024, 2, 29),
        datetime.datetime(1899, 12, 31, tzinfo=UTC),
        datetime.time(1, 2, 3),
    ),
    (
        False,
        0,
        Decimal("-0.00"),
        float("nan"),
        datetime.date(2013, 12, 31),
        datetime.datetime(2013, 1, 1, 0, 0, 15, 123_000, tzinfo=UTC),
        datetime.time(23, 0),
    ),
]


def test_numbers_booleans_dates_and_times():
    data = render(VALUE_COLUMNS, VALUE_ROWS, time_zone="UTC")
    (calamine,) = read_calamine(data)
    assert calamine[0] == ["Flag", "Number", "Amount", "Ratio", "Day", "Moment", "At"]
    assert_same_rows(
        read_back(VALUE_COLUMNS, calamine[1:]),
        calamine_expected(VALUE_COLUMNS, VALUE_ROWS, "UTC"),
        "calamine",
    )
    (openpyxl_rows,) = read_openpyxl(data)
    assert_same_rows(
        read_back(VALUE_COLUMNS, openpyxl_rows[1:], openpyxl_text=True),
        openpyxl_expected(VALUE_COLUMNS, VALUE_ROWS, "UTC"),
        "openpyxl",
    )
    # Spelled out: integers of 16 digits are text, Decimals are their value.
    assert calamine[1][1] == 999_999_999_999_999.0
    assert [row[1] for row in calamine[2:4]] == ["1000000000000000", "-1000000000000000"]
    assert calamine[5][1] == "9223372036854775807"
    assert [row[2] for row in calamine[1:]] == [
        -1234.5,
        0.1,
        12345678901234567890.5,
        "NaN",
        1000.0,
        0.0,
    ]
    assert [row[0] for row in calamine[1:]] == [True, False, True, False, True, False]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sheet_xml = archive.read("xl/worksheets/sheet1.xml").decode()
    # The Decimal's exact digits are in the file (Excel keeps 15 significant ones).
    assert "<v>12345678901234567890.5</v>" in sheet_xml
    assert "<v>-1234.50</v>" in sheet_xml


def test_numbers_booleans_dates_and_times_in_libreoffice(libreoffice_books):
    rows = libreoffice_books["values"]
    assert rows[0] == ["Flag", "Number", "Amount", "Ratio", "Day", "Moment", "At"]
    expected = [
        [libreoffice_cell(c, v, "UTC") for c, v in zip(VALUE_COLUMNS, row, strict=True)]
        for row in VALUE_ROWS
    ]
    got = libreoffice_read_back(VALUE_COLUMNS, VALUE_ROWS, "UTC", rows[1:])
    assert_same_rows(got, expected, "LibreOffice")


ALL_KINDS = [
    kinds.TEXT,
    kinds.INTEGER,
    kinds.FLOAT,
    kinds.DECIMAL,
    kinds.BOOLEAN,
    kinds.DATE,
    kinds.DATETIME,
    kinds.TIME,
    kinds.DURATION,
    kinds.UUID,
    kinds.JSON,
    kinds.BINARY,
    kinds.OTHER,
]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_a_null_cell_keeps_its_place(kind):
    columns = [column(kinds.TEXT, "before"), column(kind, "value"), column(kinds.TEXT, "after")]
    data = render(columns, [("b", None, "a"), ("b", None, None)])
    assert read_calamine(data)[0][1:] == [["b", "", "a"], ["b", "", ""]]
    assert read_openpyxl(data)[0][1:] == [["b", None, "a"], ["b", None, None]]


def test_text_kinds_are_spelled_as_in_csv():
    columns = [
        column(kinds.BINARY, "blob"),
        column(kinds.UUID, "key"),
        column(kinds.DURATION, "took"),
        column(kinds.JSON, "data"),
        column(kinds.OTHER, "other"),
    ]
    rows = [
        (
            b"\x00\xff=1+1",
            uuid.UUID(int=1),
            -datetime.timedelta(days=1, seconds=5),
            {"a": [1, "=2", None]},
            ["x", 1],
        ),
        (memoryview(b"abc"), uuid.UUID(int=2), datetime.timedelta(0), "text", 3.5),
    ]
    assert read_calamine(render(columns, rows))[0][1:] == [
        [
            "AP89MSsx",
            "00000000-0000-0000-0000-000000000001",
            "-P1DT00H00M05S",
            '{"a":[1,"=2",null]}',
            '["x",1]',
        ],
        ["YWJj", "00000000-0000-0000-0000-000000000002", "P0DT00H00M00S", '"text"', "3.5"],
    ]


# --- sheets ------------------------------------------------------------------------------


@both_databases
@pytest.mark.parametrize(
    ("how", "chunk_size"),
    [("format_options", 5), ("export_format", 500), ("format_options", 1)],
)
def test_sheet_breaks_every_max_sheet_rows(db_alias, how, chunk_size):
    """12 rows, 5 rows a sheet with the header: 3 sheets of 4 rows, the header repeated."""
    make_records(db_alias, 12)
    queryset = records(db_alias)
    if how == "format_options":
        options = {"format_options": {"max_sheet_rows": 5}}
    else:
        options = {"export_format": lambda columns: XLSXFormat(columns, max_sheet_rows=5)}
    data, columns = export(queryset, chunk_size=chunk_size, buffer_size=512, **options)
    ids_titles = [row[:2] for row in database_rows(queryset, columns)]

    assert sheet_names(data) == ["records", "records (2)", "records (3)"]
    calamine = read_calamine(data)
    assert [len(sheet) for sheet in calamine] == [5, 5, 5]
    assert all(sheet[0] == LABELS for sheet in calamine)
    assert [[int(row[0]), row[1]] for sheet in calamine for row in sheet[1:]] == ids_titles
    openpyxl_sheets = read_openpyxl(data)
    assert [
        [row[0], decode_xstring(row[1])] for sheet in openpyxl_sheets for row in sheet[1:]
    ] == ids_titles
    assert all(sheet[0] == LABELS for sheet in openpyxl_sheets)

    facts = zip_facts(data)
    assert facts.names == [
        "_rels/.rels",
        "xl/styles.xml",
        "xl/worksheets/sheet1.xml",
        "xl/worksheets/sheet2.xml",
        "xl/worksheets/sheet3.xml",
        "xl/workbook.xml",
        "xl/_rels/workbook.xml.rels",
        "[Content_Types].xml",
    ]
    workbook = openpyxl.load_workbook(io.BytesIO(data))
    for sheet in workbook.worksheets:
        assert sheet.freeze_panes == "A2"
        assert sheet.auto_filter.ref == f"A1:{LAST_COLUMN}5"
        assert all(cell.font.b for cell in sheet[1])


@both_databases
def test_sheet_breaks_at_max_sheet_bytes(db_alias):
    make_records(db_alias, 12)
    queryset = records(db_alias)
    limit = 4_000  # the header row takes about 1,500 bytes, a row 500 to 900
    data, columns = export(queryset, chunk_size=5, format_options={"max_sheet_bytes": limit})
    ids_titles = [row[:2] for row in database_rows(queryset, columns)]

    calamine = read_calamine(data)
    count = len(calamine)
    assert count >= 3
    assert sheet_names(data) == ["records", *(f"records ({n})" for n in range(2, count + 1))]
    assert all(sheet[0] == LABELS and len(sheet) >= 2 for sheet in calamine)
    assert [[int(row[0]), row[1]] for sheet in calamine for row in sheet[1:]] == ids_titles
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        sizes = [
            archive.getinfo(f"xl/worksheets/sheet{n}.xml").file_size for n in range(1, count + 1)
        ]
    assert max(sizes) <= limit, sizes


def test_a_sheet_break_inside_one_batch():
    """One render_rows() call that crosses two sheet breaks."""
    rows = [(f"row {n}",) for n in range(1, 10)]
    data = render([column(kinds.TEXT, "text")], rows, max_sheet_rows=4, title="Batch")
    assert sheet_names(data) == ["Batch", "Batch (2)", "Batch (3)"]
    assert read_calamine(data) == [
        [["Text"], ["row 1"], ["row 2"], ["row 3"]],
        [["Text"], ["row 4"], ["row 5"], ["row 6"]],
        [["Text"], ["row 7"], ["row 8"], ["row 9"]],
    ]


# --- header, sheet name, autofilter -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_header_is_bold_frozen_and_filtered():
    make_records("default")
    data, _ = export(records("default"))
    workbook = openpyxl.load_workbook(io.BytesIO(data))  # read_only has no panes or filters
    (sheet,) = workbook.worksheets
    assert sheet.title == "records"  # Record's verbose_name_plural
    assert [cell.value for cell in sheet[1]] == LABELS
    assert all(cell.font.b for cell in sheet[1])
    assert not any(cell.font.b for cell in sheet[2])
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:{LAST_COLUMN}18"  # the header and 17 rows
    assert sheet.column_dimensions["A"].width >= len("ID")


def test_autofilter_defined_names_are_elements():
    """Each autofilter has its hidden ``_xlnm._FilterDatabase`` name, as Excel writes it."""
    rows = [(f"row {n}",) for n in range(1, 7)]
    data = render([column(kinds.TEXT, "text")], rows, max_sheet_rows=4, title="It's <a> & b")
    text, names = defined_names(data)
    assert text.strip() == ""
    element = f"{MAIN}definedName"
    assert names == [
        (element, "_xlnm._FilterDatabase", "0", "1", "'It''s <a> & b'!$A$1:$A$4"),
        (element, "_xlnm._FilterDatabase", "1", "1", "'It''s <a> & b (2)'!$A$1:$A$4"),
    ]


def test_sheet_title_option_and_awkward_titles():
    data = render([column(kinds.TEXT, "text")], [("x",)], sheet_title="Q1: sales/returns [EU]?")
    assert sheet_names(data) == ["Q1  sales returns  EU"]
    data = render([column(kinds.TEXT, "text")], [("x",)], title='It\'s <b> & "more"')
    assert sheet_names(data) == ['It\'s <b> & "more"']
    assert read_calamine(data) == [[["Text"], ["x"]]]


@pytest.mark.parametrize(
    ("title", "number", "expected"),
    [
        ("records", 1, "records"),
        ("records", 2, "records (2)"),
        ("records", 12, "records (12)"),
        ("a" * 40, 1, "a" * 31),
        ("a" * 40, 2, "a" * 27 + " (2)"),
        ("a" * 40, 100, "a" * 25 + " (100)"),
        ("x[1]:y*z?/w\\v", 1, "x 1  y z  w v"),
        ("'quoted'", 1, "quoted"),
        ("''", 1, "Export"),
        ("", 1, "Export"),
        ("   ", 3, "Export (3)"),
        ("[]:*?/\\", 1, "Export"),
        ("tab\tnew\nline\x00", 1, "tab new line"),
        ("a" * 30 + "'b", 1, "a" * 30),
        ("It's fine", 1, "It's fine"),
        ("ünïcødé 📈", 2, "ünïcødé 📈 (2)"),
    ],
)
def test_sheet_name(title, number, expected):
    name = sheet_name(title, number)
    assert name == expected
    assert 1 <= len(name) <= 31
    assert not set(name) & set("[]:*?/\\")
    assert not name.startswith("'") and not name.endswith("'")


def test_sheet_names_stay_unique_when_cut():
    names = [sheet_name("b" * 40, number) for number in range(1, 12)]
    assert len({name.casefold() for name in names}) == len(names)
    assert all(len(name) <= 31 for name in names)


# --- the zip -----------------------------------------------------------------------------


@pytest.mark.parametrize("sheets", [1, 3])
def test_zip_has_no_zip64_and_the_documented_order(sheets):
    rows = [(f"row {n}",) for n in range(1, 2 * sheets)]
    data = render([column(kinds.TEXT, "text")], rows, max_sheet_rows=3)
    facts = zip_facts(data)
    assert facts.testzip is None
    sheet_parts = [f"xl/worksheets/sheet{n}.xml" for n in range(1, sheets + 1)]
    assert facts.names == [*PARTS[:2], *sheet_parts, *PARTS[3:]]
    count = len(facts.names)
    assert facts.versions_needed == [20] * count  # deflate, 2.0 (APPNOTE 4.4.3.2)
    assert facts.central_versions_needed == [20] * count
    assert all(flag & 0x08 for flag in facts.flags)  # sizes follow in data descriptors
    assert not facts.zip64_extra
    assert not facts.zip64_end
    # The central directory lists what the local headers hold, in the same order.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == facts.names
    assert [name for name, _ in read_local_members(data)] == facts.names


def test_package_parts_are_declared_and_related():
    """OPC (ECMA-376 Part 2): content types for every part, relationships that resolve."""
    data = render([column(kinds.TEXT, "text")], [("a",), ("b",), ("c",)], max_sheet_rows=3)
    archive = zipfile.ZipFile(io.BytesIO(data))
    parts = {name: ET.fromstring(archive.read(name)) for name in archive.namelist()}  # well-formed
    types = parts["[Content_Types].xml"]
    ct = "{http://schemas.openxmlformats.org/package/2006/content-types}"
    sml = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    assert {d.get("Extension"): d.get("ContentType") for d in types.iter(f"{ct}Default")} == {
        "rels": "application/vnd.openxmlformats-package.relationships+xml",
        "xml": "application/xml",
    }
    assert {o.get("PartName"): o.get("ContentType") for o in types.iter(f"{ct}Override")} == {
        "/xl/workbook.xml": f"{sml}.sheet.main+xml",
        "/xl/styles.xml": f"{sml}.styles+xml",
        "/xl/worksheets/sheet1.xml": f"{sml}.worksheet+xml",
        "/xl/worksheets/sheet2.xml": f"{sml}.worksheet+xml",
    }
    rel = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
    doc = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    (root,) = parts["_rels/.rels"].iter(rel)
    assert (root.get("Type"), root.get("Target")) == (f"{doc}/officeDocument", "xl/workbook.xml")
    targets = {
        r.get("Id"): (r.get("Type"), r.get("Target"))
        for r in parts["xl/_rels/workbook.xml.rels"].iter(rel)
    }
    sheets = parts["xl/workbook.xml"].iter(f"{MAIN}sheet")
    assert [(s.get("name"), s.get("sheetId"), targets[s.get(f"{{{doc}}}id")]) for s in sheets] == [
        ("Values", "1", (f"{doc}/worksheet", "worksheets/sheet1.xml")),
        ("Values (2)", "2", (f"{doc}/worksheet", "worksheets/sheet2.xml")),
    ]
    assert (f"{doc}/styles", "styles.xml") in targets.values()


@pytest.mark.django_db(transaction=True)
def test_http_response_is_an_xlsx_download(client):
    make_records("default")
    response = client.get("/records/export/", {"format": "xlsx"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == MEDIA_TYPE  # binary: no charset parameter
    assert response["Content-Disposition"] == 'attachment; filename="records.xlsx"'
    data = body(response)
    facts = zip_facts(data)
    assert facts.testzip is None
    assert facts.names == PARTS
    (calamine,) = read_calamine(data)
    assert calamine[0] == LABELS
    assert [int(row[0]) for row in calamine[1:]] == list(
        records("default").values_list("id", flat=True)
    )


# --- streaming ---------------------------------------------------------------------------


@both_databases
def test_first_parts_are_sent_before_the_query_runs(db_alias):
    make_records(db_alias, 50)
    queryset = records(db_alias)
    columns = resolve_columns(queryset, ALL_FIELDS)
    stream = plan_stream(queryset, columns, XLSXFormat(columns), using=db_alias)
    chunks = iter(stream)
    with CaptureQueriesContext(connections[db_alias]) as queries:
        first = next(chunks)
    assert len(queries) == 0
    # Two whole members, nothing of the sheet yet.
    assert [name for name, _ in read_local_members(first)] == ["_rels/.rels", "xl/styles.xml"]
    assert b"xl/worksheets" not in first
    data = first + b"".join(chunks)
    assert stream.outcome == "complete"
    assert stream.bytes == len(data)
    assert len(read_calamine(data)[0]) == 51


@pytest.mark.django_db(transaction=True)
def test_a_large_export_arrives_in_several_chunks(pg_alias):
    make_records(pg_alias, 20_000)
    queryset = records(pg_alias)
    columns = resolve_columns(queryset, ALL_FIELDS)
    stream = plan_stream(
        queryset,
        columns,
        XLSXFormat(columns),
        chunk_size=2_000,
        buffer_size=64 * 1024,
        using=pg_alias,
    )
    chunks = list(stream)
    sizes = [len(chunk) for chunk in chunks if chunk]
    assert len(sizes) >= 5, sizes
    data = b"".join(chunks)
    assert stream.rows == 20_000
    (calamine,) = read_calamine(data)
    assert len(calamine) == 20_001
    assert [int(row[0]) for row in calamine[1:]] == list(queryset.values_list("id", flat=True))


@pytest.mark.django_db(transaction=True)
def test_memory_does_not_grow_with_rows(pg_alias):
    """Peak Python allocations for 20,000 rows stay close to those for 2,000.

    ``created`` is one hour later each row: a cache per hour must not grow with them.
    """
    make_records(pg_alias, 20_000)

    def peak(limit):
        queryset = records(pg_alias)[:limit]
        columns = resolve_columns(queryset, ALL_FIELDS)
        stream = plan_stream(
            queryset,
            columns,
            XLSXFormat(columns),
            chunk_size=500,
            buffer_size=64 * 1024,
            using=pg_alias,
        )
        return traced_peak(stream)

    small_peak, small_bytes = peak(2_000)
    large_peak, large_bytes = peak(20_000)
    assert large_bytes > 8 * small_bytes
    # A buffered export would peak at about large_bytes (compressed; more uncompressed).
    assert large_peak - small_peak < (large_bytes - small_bytes) / 10, (small_peak, large_peak)


# --- failures ----------------------------------------------------------------------------


class FailingXLSXFormat(XLSXFormat):
    """Fails on its fourth batch of rows, after some have gone out."""

    def render_rows(self, rows):
        self.batches = getattr(self, "batches", 0) + 1
        if self.batches == 4:
            raise ValueError("rendering failed")
        return super().render_rows(rows)


@contextlib.contextmanager
def unraisable_exceptions():
    """Collect what ``__del__`` methods raise (Python can only print it), after a gc run.

    The package's logger is off meanwhile: a failure's log record keeps its traceback, so
    the stream and its format, alive as long as pytest keeps the record.
    """
    seen: list[Any] = []
    previous = sys.unraisablehook
    package_logger = logging.getLogger("django_streamexport")
    sys.unraisablehook = seen.append
    package_logger.disabled = True
    try:
        yield seen
        gc.collect()
    finally:
        sys.unraisablehook = previous
        package_logger.disabled = False


def cut_export(alias: str, how: str) -> tuple[list[bytes], str | None, type | None, Any]:
    """Export 3,000 records and stop mid-stream: a row limit, a failing format or a client
    that goes away.  Return the chunks received, the outcome, what was raised and a weak
    reference to the format; the stream and its format are left to the garbage collector,
    as a server leaves them."""
    make_records(alias, 3_000)
    queryset = records(alias)
    columns = resolve_columns(queryset, ALL_FIELDS)
    options: dict[str, Any] = {"chunk_size": 500, "buffer_size": 16 * 1024, "using": alias}
    if how == "row-limit":
        fmt, options["max_rows"] = XLSXFormat(columns), 2_000
    else:  # compress_level 0: rows leave at once, so some are out before the failure
        fmt = (FailingXLSXFormat if how == "format" else XLSXFormat)(columns, compress_level=0)
    stream = plan_stream(queryset, columns, fmt, **options)
    format_ref = weakref.ref(fmt)
    del fmt
    received: list[bytes] = []
    raised = None
    try:
        for chunk in stream:
            received.append(chunk)
            if how == "disconnect" and len(received) == 4:
                stream.close()  # what a WSGI server does when the client disconnects
                break
    except Exception as exc:
        raised = type(exc)
    return received, stream.outcome, raised, format_ref


@both_databases
@pytest.mark.parametrize(
    ("how", "exception"), [("row-limit", RowLimitExceeded), ("format", ValueError)]
)
def test_a_failure_mid_stream_raises_and_leaves_an_unreadable_workbook(db_alias, how, exception):
    with unraisable_exceptions():  # see test_a_cut_export_leaves_nothing_to_print_at_collection
        received, outcome, raised, _ = cut_export(db_alias, how)
    assert raised is exception
    assert outcome == "failed"
    data = b"".join(received)
    assert len(data) > len(received[0])  # rows went out before the failure
    assert_unreadable(data)


@both_databases
@pytest.mark.parametrize("how", ["row-limit", "format", "disconnect"])
def test_a_cut_export_leaves_nothing_to_print_at_collection(db_alias, how):
    with unraisable_exceptions() as ignored:
        received, outcome, _, format_ref = cut_export(db_alias, how)
    assert format_ref() is None  # collected: whatever its __del__ raised is in ignored
    assert outcome in ("failed", "disconnected")
    assert_unreadable(b"".join(received))
    assert [f"{hook.exc_type.__name__}: {hook.exc_value}" for hook in ignored] == []


# --- empty -------------------------------------------------------------------------------


@both_databases
def test_an_empty_export_is_a_workbook_with_only_the_header(db_alias):
    data, _ = export(records(db_alias))
    assert read_calamine(data) == [[LABELS]]
    assert read_openpyxl(data) == [[LABELS]]
    assert sheet_names(data) == ["records"]
    facts = zip_facts(data)
    assert facts.testzip is None
    assert facts.names == PARTS
    sheet = openpyxl.load_workbook(io.BytesIO(data)).worksheets[0]
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:{LAST_COLUMN}1"


# --- LibreOffice, once per module -------------------------------------------------------


@pytest.fixture(scope="module")
def libreoffice_books(tmp_path_factory):
    """The format-only workbooks, converted to CSV by one LibreOffice run."""
    text = [column(kinds.TEXT, "text")]
    books = {
        "formulas": render(text, [(t,) for t in FORMULA_TEXTS]),
        "forbidden": render(text, [(t,) for t in FORBIDDEN_TEXTS]),
        "values": render(VALUE_COLUMNS, VALUE_ROWS, time_zone="UTC"),
    }
    converted = read_libreoffice_many(list(books.values()), tmp_path_factory.mktemp("xlsx"))
    return dict(zip(books, converted, strict=True))
