"""PostgreSQL spells the same CSV as Python: COPY mode and database formatting.

Each fast path is compared byte for byte with the pure-Python path
(``database_formatting=False``), and falls back (or refuses) with a reason.
"""

from __future__ import annotations

import datetime
import gc
import logging
import time
import uuid
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.models import CharField, F, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Concat
from django.test import override_settings
from django.utils import translation

from django_streamexport.columns import Column, resolve_columns
from django_streamexport.formats.csv import CSVFormat, ExcelCSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from tests.conftest import both_databases, make_records, parse_csv, plan_stream, server_side_cursors
from tests.testapp.models import Record
from tests.testapp.views import ALL_FIELDS

pytestmark = both_databases

#: COPY mode streams only through psycopg 3; on psycopg2 it falls back (tested at the end).
needs_psycopg3 = pytest.mark.skipif(
    not is_psycopg3, reason="COPY mode needs psycopg 3; the psycopg2 fallback is tested below"
)

#: Every column COPY can spell (ALL_FIELDS minus the JSON column).
COPY_FIELDS = [f for f in ALL_FIELDS if f != "data"]


def streams(
    alias,
    fields=COPY_FIELDS,
    queryset=None,
    fmt=CSVFormat,
    copy_mode=True,
    stream_options=None,
    mode="copy",
    **options,
):
    """Return (Python, fast) streams of the same export; ``options`` go to the format.

    The first formats every value in Python (database formatting off, so COPY off too).
    The second has COPY mode on (``mode="copy"``; it falls back to database formatting)
    or database formatting without COPY (``mode="text"``, ``copy_mode=False``).
    """
    queryset = queryset if queryset is not None else Record.objects.using(alias).order_by("id")
    columns = resolve_columns(queryset, fields)
    kwargs = {"chunk_size": 7, "buffer_size": 512, "using": alias, **(stream_options or {})}
    python = plan_stream(
        queryset, columns, fmt(columns, **options), database_formatting=False, **kwargs
    )
    if mode == "text":
        fast = plan_stream(
            queryset,
            columns,
            fmt(columns, **options),
            database_formatting=True,
            copy_mode=False,
            **kwargs,
        )
    else:
        fast = plan_stream(
            queryset, columns, fmt(columns, **options), copy_mode=copy_mode, **kwargs
        )
    return python, fast


def fast_path_used(stream) -> bool:
    """Say whether ``stream`` uses its fast path: COPY in COPY mode, else database formatting."""
    if stream.plan.copy_mode:
        return stream.reader.name == "copy"
    return stream.reader.text_cells


#: Both fast paths; COPY only with psycopg 3.
MODES = [pytest.param("copy", marks=needs_psycopg3), "text"]


@pytest.mark.parametrize("mode", MODES)
def test_fast_output_equals_the_python_output_byte_for_byte(pg_alias, mode):
    make_records(pg_alias)
    standard, copy = streams(pg_alias, mode=mode)
    expected, got = b"".join(standard), b"".join(copy)
    assert fast_path_used(copy)
    assert "database formatting is off" in standard.reader.reason
    assert got == expected
    assert copy.rows == standard.rows == Record.objects.count()
    assert copy.bytes == len(got)
    # Parsed independently, too: same cells, CRLF line ends, escaped formulas.
    assert parse_csv(got) == parse_csv(expected)
    assert got.count(b"\r\n") >= copy.rows + 1
    assert server_side_cursors(pg_alias) == []


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_spells_edge_values_as_python_does(pg_alias, mode):
    make_records(pg_alias, count=3)
    edge = [
        (1e15, datetime.timedelta(days=-2, microseconds=1), datetime.time(0, 0)),
        (-1234567890123456.8, datetime.timedelta(0), datetime.time(1, 2, 3, 40)),
        (float("inf"), -datetime.timedelta(seconds=1), None),
        (float("nan"), datetime.timedelta(days=3), datetime.time(23, 59, 59, 999999)),
        (-0.0, datetime.timedelta(microseconds=-5), datetime.time(12)),
        (100.0, datetime.timedelta(days=10_000), datetime.time(0, 0, 0, 1)),
        (1e-7, None, None),
        (1e22, None, None),
    ]
    # Text around the SQL fast path (first code point above 64, "A") and each trigger.
    titles = ["", "9 digit first", " space first", "\nlf first", "Ωmega", "A", "@", "'"]
    for (ratio, took, at), title in zip(edge, titles, strict=True):
        Record.objects.using(pg_alias).create(
            title=title,
            body="-x",
            ratio=ratio,
            took=took,
            at=at,
            flag=False,
            created=datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc),
            amount=Decimal("0.00"),
            key=uuid.uuid4(),
        )
    standard, copy = streams(pg_alias, mode=mode)
    assert b"".join(copy) == b"".join(standard)
    assert fast_path_used(copy)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "options", [{"delimiter": ";"}, {"bom": True}, {"escape_formulas": False}, {"header": False}]
)
def test_fast_path_follows_the_format_options(pg_alias, options, mode):
    make_records(pg_alias)
    standard, copy = streams(pg_alias, mode=mode, **options)
    assert b"".join(copy) == b"".join(standard)
    assert fast_path_used(copy)


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_handles_annotations_filters_joins_and_forced_escaping(pg_alias, mode):
    make_records(pg_alias)
    queryset = (
        Record.objects.using(pg_alias)
        .filter(title__contains="e")
        .annotate(shout=Concat(F("title"), Value("!")))
        .order_by("-id")
    )
    fields = [
        "shout",
        "id",
        Column("flag", escape_formulas=True),
        "author__name",
        Column("title", escape_formulas=False),
    ]
    standard, copy = streams(pg_alias, fields, queryset, mode=mode)
    assert b"".join(copy) == b"".join(standard)
    assert fast_path_used(copy)


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_empty_queryset(pg_alias, mode):
    standard, copy = streams(pg_alias, queryset=Record.objects.none(), mode=mode)
    assert b"".join(copy) == b"".join(standard)
    assert copy.rows == 0


@pytest.mark.parametrize("copy_mode", [True, None], ids=["on", "default"])
@needs_psycopg3
def test_copy_falls_back_with_a_reason_and_the_same_output(pg_alias, caplog, copy_mode):
    reason = "column 'data' holds json values"
    make_records(pg_alias)
    with caplog.at_level(logging.INFO, logger="django_streamexport"):
        standard, copy = streams(pg_alias, ALL_FIELDS, copy_mode=copy_mode)
    assert copy.plan.copy_mode is True
    assert copy.reader.reason.startswith(f"not COPY: {reason}")
    assert any(reason in r.getMessage() for r in caplog.records)
    assert b"".join(copy) == b"".join(standard)


@needs_psycopg3
def test_ndjson_never_uses_copy(pg_alias):
    make_records(pg_alias)
    standard, fast = streams(pg_alias, fmt=NDJSONFormat)
    assert fast.reader.name != "copy"
    assert "COPY" not in fast.reader.reason
    assert b"".join(fast) == b"".join(standard)


def test_one_column_csv_uses_database_formatting(pg_alias):
    """COPY refuses a one-column CSV; database formatting gives Python's spelling of it."""
    make_records(pg_alias)
    standard, fast = streams(pg_alias, ["title"], mode="text")
    assert b"".join(fast) == b"".join(standard)
    assert fast_path_used(fast)


@pytest.mark.parametrize(
    "fields, fmt, reason",
    [
        (ALL_FIELDS, CSVFormat, "column 'data' holds json values"),
        (COPY_FIELDS, NDJSONFormat, "not CSV"),
    ],
)
def test_database_formatting_falls_back_with_a_reason_and_the_same_output(
    pg_alias, fields, fmt, reason
):
    make_records(pg_alias)
    standard, fast = streams(pg_alias, fields, fmt=fmt, mode="text")
    assert b"".join(fast) == b"".join(standard)
    assert reason in fast.reader.reason


@pytest.mark.parametrize("mode", ["copy", "text"])
def test_fast_paths_fall_back_for_a_custom_converter_and_on_sqlite(db_alias, mode):
    class Shouting(CSVFormat):
        def get_converter(self, column):
            return str.upper if column.kind == "text" else super().get_converter(column)

    make_records(db_alias)
    standard, copy = streams(db_alias, fmt=Shouting, mode=mode)
    data = b"".join(copy)
    assert data == b"".join(standard)
    assert not fast_path_used(copy)
    assert b",PLAIN," in data  # the converter ran


@needs_psycopg3
def test_copy_mode_require_refuses_before_the_response(pg_alias):
    queryset = Record.objects.using(pg_alias)
    columns = resolve_columns(queryset, ALL_FIELDS)
    with pytest.raises(ImproperlyConfigured, match="column 'data' holds json"):
        plan_stream(
            queryset,
            columns,
            CSVFormat(columns),
            copy_mode="require",
            chunk_size=10,
            buffer_size=100,
        )


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_under_use_tz_false(pg_alias, mode):
    make_records(pg_alias)
    with override_settings(USE_TZ=False):
        from django.db import connections

        connections[pg_alias].close()
        try:
            standard, copy = streams(pg_alias, mode=mode)
            assert b"".join(copy) == b"".join(standard)
            assert fast_path_used(copy)
        finally:
            connections[pg_alias].close()


@needs_psycopg3
def test_copy_stream_closed_early_leaves_a_usable_connection(pg_alias):
    make_records(pg_alias, count=3000)
    _, copy = streams(pg_alias)
    chunks = iter(copy)
    first = next(chunks)
    assert first.startswith(b"ID,")
    next(chunks)
    copy.close()
    assert Record.objects.using(pg_alias).count() == 3000
    assert server_side_cursors(pg_alias) == []


@needs_psycopg3
def test_copy_rows_set_off_no_garbage_collection(pg_alias):
    """COPY's rows are copied out of libpq's blocks as they arrive, not held as blocks (a
    ``memoryview`` each, which the garbage collector tracks): 20,000 rows set off no
    collection of the older generations.  Holding them set off 4 of the middle one here
    (and a full one after every 10, which walks every object of the process)."""
    Record.objects.using(pg_alias).bulk_create(
        [Record(title=f"row {i}", status="d") for i in range(20_000)]
    )
    _, copy = streams(pg_alias, ["id", "title"], stream_options={"buffer_size": 64 * 1024})
    assert copy.reader.name == "copy"
    gc.collect()
    before = [generation["collections"] for generation in gc.get_stats()]
    data = b"".join(copy)
    after = [generation["collections"] for generation in gc.get_stats()]
    assert copy.rows == 20_000
    assert len(parse_csv(data)) == 1 + 20_000
    young, middle, old = (a - b for a, b in zip(after, before, strict=True))
    assert (middle, old) == (0, 0), (young, middle, old)
    assert young < 10, (young, middle, old)


@needs_psycopg3
@override_settings(STREAMEXPORT_COPY_MODE=True)
def test_view_uses_copy_mode_from_the_setting(pg_alias, client):
    make_records(pg_alias)
    from tests.testapp.views import RecordExport

    view = RecordExport()
    view.setup(type("R", (), {"GET": {}, "method": "GET"})())
    stream = view.get_export_stream()
    assert stream.plan.copy_mode is True
    # ALL_FIELDS has a JSON column: the fall-back gives the standard file.
    assert stream.reader.name != "copy"
    assert "not COPY: column 'data' holds json" in stream.reader.reason
    response = client.get("/records/export/?format=csv")
    with override_settings(STREAMEXPORT_COPY_MODE=False):
        plain = client.get("/records/export/?format=csv")
    assert b"".join(response.streaming_content) == b"".join(plain.streaming_content)


def run(stream):
    """Iterate ``stream`` as a server would; return what a client and the signals see."""
    chunks, error = [], None
    try:
        for chunk in stream:
            chunks.append(chunk)
    except Exception as exc:
        error = exc
    return {
        "data": b"".join(chunks),
        "error": type(error).__name__ if error else None,
        "rows": stream.rows,
        "bytes": stream.bytes,
        "outcome": stream.outcome,
        "error_code": stream.error_code,
    }


@needs_psycopg3
@pytest.mark.parametrize("over", [-30, -1, 0, 1], ids=["few", "one-less", "exact", "one-more"])
@pytest.mark.parametrize("fields", [COPY_FIELDS, ["title"]], ids=["columns", "one-column"])
def test_copy_row_limit_behaves_exactly_as_the_cursor(pg_alias, over, fields):
    """``LIMIT max_rows + 1``: exactly ``max_rows`` rows, then ``row_limit`` when there were
    more, as on the cursor path and the Python path (bytes, counters, outcome, signals)."""
    from django_streamexport.signals import export_finished

    make_records(pg_alias, 80)
    count = Record.objects.using(pg_alias).count()
    limit = count + over
    seen = []

    def finished(sender, **kwargs):
        seen.append((kwargs["rows"], kwargs["bytes"], kwargs["outcome"], kwargs["error_code"]))

    export_finished.connect(finished)
    try:
        python, copy = streams(pg_alias, fields, stream_options={"max_rows": limit})
        _, cursor = streams(pg_alias, fields, mode="text", stream_options={"max_rows": limit})
        assert copy.reader.name == "copy"
        assert f" LIMIT {limit + 1:d}) TO STDOUT " in copy.reader.statement
        assert cursor.reader.text_cells and cursor.reader.name != "copy"
        results = [run(python), run(cursor), run(copy)]
    finally:
        export_finished.disconnect(finished)
    assert results[2] == results[1] == results[0]
    rows = min(limit, count)
    assert results[2]["rows"] == rows
    assert len(parse_csv(results[2]["data"])) == 1 + rows
    if over < 0:
        assert results[2]["error"] == "RowLimitExceeded"
        assert results[2]["error_code"] == "row_limit"
    else:
        assert results[2]["outcome"] == "complete"
    assert len(seen) == 3
    assert seen[0] == seen[1] == seen[2]
    assert server_side_cursors(pg_alias) == []


@needs_psycopg3
@pytest.mark.parametrize("fields", [["title"], ["body"], ["count"], ["status"], ["flag"],
                                    ["created"], ["amount"]])  # fmt: skip
@pytest.mark.parametrize("fmt", [CSVFormat, ExcelCSVFormat])
def test_copy_writes_a_one_column_export_as_python_does(pg_alias, fields, fmt):
    """Python's csv writes a row of one empty field as ``""``; COPY then quotes ``''``."""
    make_records(pg_alias)
    Record.objects.using(pg_alias).create(title="", body="")
    python, copy = streams(pg_alias, fields, fmt=fmt)
    _, text = streams(pg_alias, fields, fmt=fmt, mode="text")
    data = b"".join(copy)
    assert copy.reader.name == "copy"
    assert data == b"".join(python) == b"".join(text)
    if fields != ["status"]:  # never empty
        assert b'\r\n""\r\n' in data  # an empty cell, quoted
    assert copy.rows == python.rows == Record.objects.using(pg_alias).count()


def slow_records(alias):
    """Records with a column that takes the database 5 s per row."""
    return (
        Record.objects.using(alias)
        .annotate(slow=RawSQL("pg_sleep(5)::text", [], output_field=CharField()))
        .order_by("id")
    )


@needs_psycopg3
def test_copy_statement_timeout_bounds_each_wait_for_rows(pg_alias):
    """COPY is one statement, but the timeout bounds each wait for the next rows (the first
    includes the query's start), as it bounds each FETCH of the cursor path: a row the
    database takes too long to produce fails the export with ``statement_timeout``."""
    make_records(pg_alias, 3)
    queryset = slow_records(pg_alias)
    options = {"stream_options": {"statement_timeout": 0.3}}
    _, copy = streams(pg_alias, ["id", "title", "slow"], queryset, **options)
    _, cursor = streams(pg_alias, ["id", "title", "slow"], queryset, mode="text", **options)
    assert copy.reader.name == "copy"
    got = run(copy)
    assert got["error_code"] == "statement_timeout"
    assert copy.reader.statement_bound == 0.3
    assert run(cursor) == got
    assert server_side_cursors(pg_alias) == []
    # The connection is usable.
    assert Record.objects.using(pg_alias).count() == 3


@needs_psycopg3
def test_copy_statement_timeout_does_not_bound_a_slow_consumer(pg_alias):
    """An export that lasts longer than the statement timeout because its client reads
    slowly completes, as on the cursor path: the timeout bounds the database's waits, not
    the export (the body, ~40 MB, outgrows the socket buffers, so the COPY is still
    running while the consumer is away)."""
    make_records(pg_alias, 2500)
    queryset = (
        Record.objects.using(pg_alias)
        .annotate(big=RawSQL("repeat('x', 16000)", [], output_field=CharField()))
        .order_by("id")
    )
    for mode in ("copy", "text"):
        _, stream = streams(
            pg_alias,
            ["id", "big"],
            queryset,
            mode=mode,
            stream_options={"statement_timeout": 0.3, "buffer_size": 65536},
        )
        assert (stream.reader.name == "copy") is (mode == "copy")
        chunks = iter(stream)
        data = [next(chunks), next(chunks)]
        time.sleep(1.0)  # the consumer is away three times the statement timeout
        data += list(chunks)
        assert stream.outcome == "complete", mode
        assert stream.rows == 2500
        assert len(parse_csv(b"".join(data))) == 2501
    assert server_side_cursors(pg_alias) == []


@needs_psycopg3
def test_copy_holds_the_sessions_statement_timeout_per_wait(pg_alias):
    """Without a timeout of its own the export keeps the session's, per wait for rows."""
    from django.db import connections

    make_records(pg_alias, 3)
    with connections[pg_alias].cursor() as cursor:
        cursor.execute("SET statement_timeout = 300")  # the session's (not LOCAL)
    try:
        _, copy = streams(
            pg_alias,
            ["id", "slow"],
            slow_records(pg_alias),
            stream_options={"statement_timeout": 0},
        )
        got = run(copy)
        assert copy.reader.statement_bound == 0.3
        assert got["error_code"] == "statement_timeout"
    finally:
        with connections[pg_alias].cursor() as cursor:
            cursor.execute("RESET statement_timeout")


@pytest.mark.skipif(is_psycopg3, reason="checks the psycopg2 fallback")
def test_copy_mode_on_psycopg2_falls_back_to_the_same_file(pg_alias):
    make_records(pg_alias)
    standard, copy = streams(pg_alias)
    assert "psycopg2" in copy.reader.reason
    assert b"".join(copy) == b"".join(standard)
    with pytest.raises(ImproperlyConfigured, match="psycopg 3"):
        streams(pg_alias, copy_mode="require")


@needs_psycopg3
def test_copy_reads_row_by_row_where_psycopg_lacks_the_fast_reader(pg_alias, monkeypatch):
    """Other psycopg versions: the per-row ``Copy.read()`` fallback gives the same bytes."""
    import psycopg.generators

    make_records(pg_alias, count=300)
    standard, copy = streams(pg_alias)
    monkeypatch.delattr(psycopg.generators, "fetch_many")
    assert b"".join(copy) == b"".join(standard)
    assert copy.rows == standard.rows == 300
    assert server_side_cursors(pg_alias) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("language", "delimiter"), [("en", b","), ("de", b";")])
def test_fast_path_writes_csv_for_excel(pg_alias, mode, language, delimiter):
    """``csv-excel``: the BOM and the active language's delimiter, COPY's bytes too."""
    make_records(pg_alias)
    with translation.override(language):
        standard, fast = streams(pg_alias, fmt=ExcelCSVFormat, mode=mode)
    data = b"".join(fast)
    assert fast_path_used(fast)
    assert data == b"".join(standard)
    assert data.startswith(b"\xef\xbb\xbfID" + delimiter + b"Record title")


# --- local time: the export's time zone ------------------------------------------------------

UTC = datetime.timezone.utc
#: Instants around offset changes, in the zones' local mean time, and at the ends of years.
ZONED_INSTANTS = [
    datetime.datetime(2013, 1, 1, 5, 30, 15, 123000, tzinfo=UTC),
    datetime.datetime(2021, 3, 28, 0, 59, 59, 999999, tzinfo=UTC),  # Berlin: the last CET
    datetime.datetime(2021, 3, 28, 1, 0, tzinfo=UTC),  # Berlin: the first CEST
    datetime.datetime(2021, 10, 31, 0, 30, tzinfo=UTC),  # Berlin: 02:30 CEST...
    datetime.datetime(2021, 10, 31, 1, 30, tzinfo=UTC),  # ...and 02:30 CET, an hour later
    datetime.datetime(2021, 3, 14, 6, 59, 59, tzinfo=UTC),  # New York: the last EST
    datetime.datetime(2021, 3, 14, 7, 0, 0, 1, tzinfo=UTC),  # New York: EDT
    datetime.datetime(2021, 11, 7, 5, 30, tzinfo=UTC),  # New York: 01:30 EDT...
    datetime.datetime(2021, 11, 7, 6, 30, tzinfo=UTC),  # ...and 01:30 EST
    datetime.datetime(1945, 6, 1, tzinfo=UTC),  # Berlin +03:00, Kolkata +06:30 (wartime)
    datetime.datetime(1890, 1, 1, tzinfo=UTC),  # local mean time: offsets with seconds
    datetime.datetime(2100, 7, 1, 12, tzinfo=UTC),  # past 2037: the zones' rules
    datetime.datetime(1, 1, 1, tzinfo=UTC),  # New York: year 0, so written in UTC
    datetime.datetime(1, 1, 1, 23, 59, tzinfo=UTC),
    datetime.datetime(9999, 12, 31, 12, tzinfo=UTC),  # Kolkata: still 9999
    datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # Berlin: year 10000
    None,
]
TIME_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "America/St_Johns",  # -03:30 / -02:30
    "UTC",
    datetime.timezone(-datetime.timedelta(hours=9, minutes=30)),
    UTC,
]


def zoned_records(alias, instants=ZONED_INSTANTS):
    Record.objects.using(alias).bulk_create(
        [Record(title=f"t{i}", created=at) for i, at in enumerate(instants)]
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("zone", TIME_ZONES, ids=str)
def test_fast_path_spells_datetimes_in_the_export_time_zone_as_python_does(pg_alias, mode, zone):
    zoned_records(pg_alias)
    make_records(pg_alias, count=30)
    standard, fast = streams(pg_alias, mode=mode, stream_options={"time_zone": zone})
    expected = b"".join(standard)
    assert b"".join(fast) == expected
    assert fast_path_used(fast)
    column = COPY_FIELDS.index("created")
    cells = [row[column] for row in parse_csv(expected)[1 : len(ZONED_INSTANTS) + 1]]
    as_python = [
        "" if at is None else at.astimezone(standard.plan.time_zone).isoformat()
        for at in ZONED_INSTANTS[:12]
    ]
    assert cells[:12] == as_python
    # Every cell names its instant, years 1 and 9999 included.
    instants = [datetime.datetime.fromisoformat(cell) if cell else None for cell in cells]
    assert instants == ZONED_INSTANTS


@pytest.mark.parametrize(
    ("zone", "cells"),
    [
        (
            "Europe/Berlin",
            [
                "2013-01-01T06:30:15.123000+01:00",
                "2021-03-28T01:59:59.999999+01:00",
                "2021-03-28T03:00:00+02:00",
                "2021-10-31T02:30:00+02:00",
                "2021-10-31T02:30:00+01:00",
            ],
        ),
        (
            "America/New_York",
            [
                "2013-01-01T00:30:15.123000-05:00",
                "2021-03-27T20:59:59.999999-04:00",  # EDT since 14 March
                "2021-03-27T21:00:00-04:00",
                "2021-10-30T20:30:00-04:00",
                "2021-10-30T21:30:00-04:00",
            ],
        ),
        (
            "Asia/Kolkata",
            [
                "2013-01-01T11:00:15.123000+05:30",
                "2021-03-28T06:29:59.999999+05:30",
                "2021-03-28T06:30:00+05:30",
                "2021-10-31T06:00:00+05:30",
                "2021-10-31T07:00:00+05:30",
            ],
        ),
    ],
)
@pytest.mark.parametrize("mode", ["python", *MODES])
def test_datetimes_in_a_time_zone_keep_iso_8601_with_the_offset(pg_alias, mode, zone, cells):
    zoned_records(pg_alias, ZONED_INSTANTS[:5])
    standard, fast = streams(
        pg_alias,
        ["id", "created"],
        mode="text" if mode == "python" else mode,
        stream_options={"time_zone": zone},
    )
    stream = standard if mode == "python" else fast
    assert [row[1] for row in parse_csv(b"".join(stream))[1:]] == cells


@pytest.mark.parametrize("mode", MODES)
def test_local_mean_time_and_the_ends_of_the_years(pg_alias, mode):
    zoned_records(pg_alias, [ZONED_INSTANTS[10], ZONED_INSTANTS[12], ZONED_INSTANTS[15]])
    cells = {}
    for zone in ("Europe/Berlin", "America/New_York"):
        _, fast = streams(
            pg_alias, ["id", "created"], mode=mode, stream_options={"time_zone": zone}
        )
        cells[zone] = [row[1] for row in parse_csv(b"".join(fast))[1:]]
        assert fast_path_used(fast)
    assert cells["Europe/Berlin"] == [
        "1890-01-01T00:53:28+00:53:28",  # Berlin's local mean time
        "0001-01-01T00:53:28+00:53:28",
        "9999-12-31T23:59:59.999999+00:00",  # 10000-01-01 in Berlin: UTC
    ]
    assert cells["America/New_York"] == [
        "1889-12-31T19:00:00-05:00",  # New York: EST since 1883
        "0001-01-01T00:00:00+00:00",  # year 0 in New York: UTC
        "9999-12-31T18:59:59.999999-05:00",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_the_time_zone_leaves_the_querys_own_results_alone(pg_alias, mode):
    """The zone changes only how datetimes are spelled: not the session's time zone, on
    which a cast of a datetime to a date depends."""
    from django.db.models import DateField
    from django.db.models.functions import Cast

    zoned_records(pg_alias, ZONED_INSTANTS[:5])
    queryset = Record.objects.using(pg_alias).annotate(utc_day=Cast("created", DateField()))
    queryset = queryset.order_by("id")
    fields = ["id", "utc_day", "created"]
    _, plain_fast = streams(pg_alias, fields, queryset, mode=mode)
    zoned_python, zoned_fast = streams(
        pg_alias, fields, queryset, mode=mode, stream_options={"time_zone": "Pacific/Kiritimati"}
    )
    data = b"".join(zoned_fast)
    assert data == b"".join(zoned_python)
    plain, zoned = parse_csv(b"".join(plain_fast)), parse_csv(data)
    assert [row[1] for row in zoned] == [row[1] for row in plain]
    assert zoned[3][1:] == ["2021-03-28", "2021-03-28T15:00:00+14:00"]


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_in_a_time_zone_under_use_tz_false(pg_alias, mode):
    """Naive values (read in TIME_ZONE, New York) are written in the export's zone.

    Not the hour New York repeats in November: a naive wall time loses which of the two
    it was (Python reads the first, PostgreSQL spells the instant).
    """
    instants = [at for at in ZONED_INSTANTS[:7] if at is not None]
    zoned_records(pg_alias, instants)
    with override_settings(USE_TZ=False):
        from django.db import connections

        connections[pg_alias].close()
        try:
            standard, fast = streams(
                pg_alias, ["id", "created"], mode=mode, stream_options={"time_zone": "Asia/Kolkata"}
            )
            data = b"".join(fast)
            assert data == b"".join(standard)
            assert fast_path_used(fast)
        finally:
            connections[pg_alias].close()
    cells = [datetime.datetime.fromisoformat(row[1]) for row in parse_csv(data)[1:]]
    assert cells == instants
    assert all(cell.utcoffset() == datetime.timedelta(hours=5, minutes=30) for cell in cells)


def test_a_zone_postgresql_does_not_agree_on_falls_back_to_python(pg_alias, monkeypatch):
    """Python's zone data is newer (or PostgreSQL lacks the zone): the cells come from Python."""
    from django_streamexport.postgresql import text

    zoned_records(pg_alias, ZONED_INSTANTS[:5])

    # A zone PostgreSQL cannot name: a tzinfo of Python's own.
    class Plus1(datetime.tzinfo):
        def utcoffset(self, dt):
            return datetime.timedelta(hours=1)

        def dst(self, dt):
            return datetime.timedelta(0)

    standard, fast = streams(pg_alias, mode="text", stream_options={"time_zone": Plus1()})
    assert b"".join(fast) == b"".join(standard)
    assert "cannot name the time zone" in fast.reader.reason
    # A zone PostgreSQL does not know.
    monkeypatch.setattr(text, "zone_sql", lambda zone: "'Europe/Nowhere'")
    _, fast = streams(pg_alias, mode="text", stream_options={"time_zone": "Europe/Berlin"})
    assert "does not know the time zone" in fast.reader.reason
    # Offsets that differ from Python's (here: another zone under the same name).
    monkeypatch.setattr(text, "zone_sql", lambda zone: "'Europe/Lisbon'")
    standard, fast = streams(pg_alias, mode="text", stream_options={"time_zone": "Europe/Berlin"})
    assert "offsets of the time zone 'Europe/Berlin' differ from Python's" in fast.reader.reason
    assert b"".join(fast) == b"".join(standard)


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_of_a_query_without_parameters(pg_alias, mode):
    """No parameter at all (no choices column, no filter): the SQL has no "%" to unescape."""
    make_records(pg_alias)
    standard, fast = streams(pg_alias, ["id", "took", "created"], mode=mode)
    params = fast.reader.params if mode == "copy" else fast.reader.text_select[1]
    assert list(params) == []
    assert b"".join(fast) == b"".join(standard)
    assert fast_path_used(fast)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_params", [False, True], ids=["no-params", "params"])
def test_fast_path_of_sql_with_a_literal_percent(pg_alias, mode, with_params):
    """Django's SQL escapes a literal ``%`` as ``%%`` (``extra()``, ``RawSQL``): undone with
    the parameters, or without any (psycopg's ``copy()`` would send ``%%`` as it is)."""
    make_records(pg_alias, 30)
    queryset = Record.objects.using(pg_alias).extra(where=["testapp_record.id %% 3 <> 0"])
    if with_params:
        queryset = queryset.filter(title__startswith="row")
    queryset = queryset.order_by("id")
    standard, fast = streams(pg_alias, ["id", "title"], queryset, mode=mode)
    params = fast.reader.params if mode == "copy" else fast.reader.text_select[1]
    assert bool(list(params)) is with_params
    data = b"".join(fast)
    assert data == b"".join(standard)
    assert fast_path_used(fast)
    assert fast.rows == 20


def test_postgresql_is_asked_about_a_zone_once_per_process(pg_alias):
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    from django_streamexport.postgresql import text

    text._AGREED_ZONES.discard((pg_alias, "'Asia/Tokyo'"))
    zoned_records(pg_alias, ZONED_INSTANTS[:3])
    asked = []
    for _ in range(2):
        with CaptureQueriesContext(connections[pg_alias]) as queries:
            _, fast = streams(pg_alias, mode="text", stream_options={"time_zone": "Asia/Tokyo"})
        asked.append([q["sql"] for q in queries.captured_queries if "unnest" in q["sql"]])
        assert fast_path_used(fast)
        b"".join(fast)
    assert [len(sql) for sql in asked] == [1, 0]
    assert "timezone('Asia/Tokyo', t) - timezone('UTC', t)" in asked[0][0]
