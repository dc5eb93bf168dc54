"""choose_reader(): which reader reads an export, and why; and the get_reader() extension path.

Each decision is asserted with its reason (kept on the reader, logged at DEBUG by the
stream); every reader is then run against the database and must give the bytes of the
plainest path (Django's cursor, values formatted in Python).
"""

from __future__ import annotations

import logging

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from django_streamexport.columns import compile_query
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.plan import build_plan
from django_streamexport.readers import (
    CopyReader,
    CursorReader,
    KeysetReader,
    PrefetchingCursorReader,
    choose_reader,
)
from django_streamexport.streaming import ExportStream
from tests.conftest import both_databases, make_records, parse_csv
from tests.testapp.models import Record

needs_psycopg3 = pytest.mark.skipif(not is_psycopg3, reason="COPY and prefetching need psycopg 3")

FIELDS = ["id", "title", "amount"]
#: Read with PostgreSQL under psycopg 3 (Django's cursor under psycopg2).
PG_CURSOR = (
    (PrefetchingCursorReader, "prefetching cursor") if is_psycopg3 else (CursorReader, "cursor")
)
NO_PREFETCH = "" if is_psycopg3 else "; the driver cannot prefetch"
JSON_REFUSAL = (
    "column 'data' holds json values, which PostgreSQL spells differently from the CSV format"
)
NDJSON_REFUSAL = "the format is 'ndjson', not CSV"


class ShoutingCSV(CSVFormat):
    """CSV with a converter of its own, which SQL cannot spell."""

    def get_converter(self, column):
        return str.upper if column.kind == "text" else super().get_converter(column)


def plan(**options):
    options.setdefault("fields", FIELDS)
    return build_plan(Record.objects.order_by("id"), **options)


#: The cursor path: COPY off, as when it falls back.
OFF = {"copy_mode": False}


@pytest.mark.parametrize(
    ("options", "reader_class", "name", "text_cells", "reason"),
    [
        pytest.param(
            {"mode": "keyset"},
            KeysetReader,
            "keyset",
            False,
            'export mode is "keyset"',
            id="keyset",
        ),
        pytest.param(
            {"mode": "keyset", "copy_mode": True, "using": "sqlite"},
            KeysetReader,
            "keyset",
            False,
            'export mode is "keyset"',
            id="keyset-before-copy",
        ),
        pytest.param(
            {},
            CopyReader,
            "copy",
            False,
            "COPY mode is on",
            id="copy-by-default",
            marks=needs_psycopg3,
        ),
        pytest.param(
            {"copy_mode": True},
            CopyReader,
            "copy",
            False,
            "COPY mode is on",
            id="copy",
            marks=needs_psycopg3,
        ),
        pytest.param(
            {"copy_mode": "require"},
            CopyReader,
            "copy",
            False,
            "COPY mode is on",
            id="copy-required",
            marks=needs_psycopg3,
        ),
        pytest.param(
            {"fields": ["title"]},
            CopyReader,
            "copy",
            False,
            "COPY mode is on",
            id="copy-one-column",
            marks=needs_psycopg3,
        ),
        pytest.param(
            {"max_rows": 10},
            CopyReader,
            "copy",
            False,
            "COPY mode is on",
            id="copy-row-limit",
            marks=needs_psycopg3,
        ),
        pytest.param(
            OFF,
            *PG_CURSOR,
            True,
            "cells spelled by PostgreSQL" + NO_PREFETCH,
            id="database-formatting",
        ),
        pytest.param(
            {"database_formatting": False},
            *PG_CURSOR,
            False,
            "not COPY: database formatting is off; "
            "values formatted in Python: database formatting is off" + NO_PREFETCH,
            id="database-formatting-off",
        ),
        pytest.param(
            {"format": "ndjson"},
            *PG_CURSOR,
            False,
            f"values formatted in Python: {NDJSON_REFUSAL}" + NO_PREFETCH,
            id="ndjson",
        ),
        pytest.param(
            {"fields": ["id", "data"], **OFF},
            *PG_CURSOR,
            False,
            f"values formatted in Python: {JSON_REFUSAL}" + NO_PREFETCH,
            id="json-column",
        ),
        pytest.param(
            {"prefetch": False, **OFF},
            CursorReader,
            "cursor",
            True,
            "cells spelled by PostgreSQL; prefetching is off",
            id="prefetch-off",
        ),
        pytest.param(
            {"prefetch": False, "database_formatting": False, **OFF},
            CursorReader,
            "cursor",
            False,
            "values formatted in Python: database formatting is off; prefetching is off",
            id="prefetch-and-formatting-off",
        ),
        pytest.param(
            {"using": "sqlite"},
            CursorReader,
            "cursor",
            False,
            "values formatted in Python: database 'sqlite' is sqlite; the driver cannot prefetch",
            id="sqlite",
        ),
        pytest.param(
            {"using": "sqlite", "prefetch": False},
            CursorReader,
            "cursor",
            False,
            "values formatted in Python: database 'sqlite' is sqlite; prefetching is off",
            id="sqlite-prefetch-off",
        ),
    ],
)
def test_choose_reader_decides_with_a_reason(options, reader_class, name, text_cells, reason):
    reader = choose_reader(plan(**options))
    assert type(reader) is reader_class
    assert reader.name == name
    assert reader.text_cells is text_cells
    assert reader.reason == reason
    assert reader.renders is (reader_class is CopyReader)


class Latin1CSV(CSVFormat):
    """CSV in another charset than COPY writes."""

    charset = "latin-1"


@pytest.mark.parametrize(
    ("options", "refusal", "text_cells"),
    [
        pytest.param({"fields": ["id", "data"]}, JSON_REFUSAL, False, id="json-column"),
        pytest.param(
            {"export_format": lambda columns: Latin1CSV(columns)},
            "the format writes 'latin-1', COPY writes UTF-8",
            True,
            id="charset",
        ),
        pytest.param(
            {"export_format": lambda columns: ShoutingCSV(columns)},
            "ShoutingCSV overrides get_converter()",
            False,
            id="converter",
        ),
    ],
)
@pytest.mark.parametrize("copy_mode", [None, True], ids=["default", "on"])
@needs_psycopg3
def test_copy_falls_back_with_the_reason(options, refusal, text_cells, copy_mode, caplog):
    built = plan(copy_mode=copy_mode, **options)
    assert built.copy_mode is True
    with caplog.at_level(logging.INFO, logger="django_streamexport"):
        reader = choose_reader(built)
    assert isinstance(reader, CursorReader)
    assert not reader.renders
    assert reader.text_cells is text_cells
    assert reader.reason.startswith(f"not COPY: {refusal}; ")
    if text_cells:
        assert "cells spelled by PostgreSQL" in reader.reason
    else:
        assert f"values formatted in Python: {refusal}" in reader.reason
    assert (
        f"Export {built.export_id}: COPY mode falls back to the cursor: {refusal}."
        in caplog.messages
    )

    with pytest.raises(ImproperlyConfigured, match="COPY mode was required") as info:
        choose_reader(plan(copy_mode="require", **options))
    assert refusal in str(info.value)
    assert "copy_mode=True" in str(info.value)


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        pytest.param({"format": "ndjson"}, NDJSON_REFUSAL, id="ndjson"),
        pytest.param({"using": "sqlite"}, "database 'sqlite' is sqlite", id="sqlite"),
    ],
)
def test_copy_is_not_considered_for_other_formats_and_databases(options, refusal, caplog):
    """COPY writes CSV from PostgreSQL: the others are read as ever, no line about COPY."""
    with caplog.at_level(logging.INFO, logger="django_streamexport"):
        reader = choose_reader(plan(**options))
    assert not reader.renders
    assert "COPY" not in reader.reason
    assert not any("COPY" in message for message in caplog.messages)
    with pytest.raises(ImproperlyConfigured, match="COPY mode was required") as info:
        choose_reader(plan(copy_mode="require", **options))
    assert refusal in str(info.value)


@pytest.mark.skipif(is_psycopg3, reason="the psycopg2 fallback")
@pytest.mark.parametrize("copy_mode", [None, True], ids=["default", "on"])
def test_copy_mode_falls_back_on_psycopg2(copy_mode):  # pragma: no cover - psycopg2 only
    """psycopg2 has no COPY fast path: the default falls back to the cursor, saying why."""
    reader = choose_reader(plan(copy_mode=copy_mode))
    assert reader.name == "cursor"
    assert reader.reason.startswith("not COPY: Django uses psycopg2")
    with pytest.raises(ImproperlyConfigured, match="psycopg2"):
        choose_reader(plan(copy_mode="require"))


@pytest.mark.parametrize("options", [{}, {"fields": ["title"]}, {"max_rows": 3}])
def test_copy_mode_off_never_mentions_copy(options):
    """The opt-out: ``copy_mode=False`` reads the cursor, whatever COPY could do."""
    reader = choose_reader(plan(copy_mode=False, **options))
    assert reader.name == PG_CURSOR[1]
    assert "COPY" not in reader.reason


def test_the_stream_logs_its_reader_and_reason_at_debug(caplog):
    built = plan(format="ndjson")
    with caplog.at_level(logging.DEBUG, logger="django_streamexport"):
        stream = ExportStream(built)
    assert stream.reader.reason == f"values formatted in Python: {NDJSON_REFUSAL}" + NO_PREFETCH
    record = next(r for r in caplog.records if "reads with" in r.getMessage())
    assert record.levelno == logging.DEBUG
    assert record.name == "django_streamexport"
    assert record.getMessage() == f"Export {built.export_id} reads with {stream.reader!r}."
    assert stream.reader.reason in record.getMessage()
    assert stream.reader.name in record.getMessage()
    stream.close()


# --- every reader gives the same bytes -------------------------------------------------------

SAME_FIELDS = ["id", "title", "body", "amount", "ratio", "flag", "created", "author__name"]


@both_databases
@pytest.mark.parametrize(
    ("options", "name"),
    [
        pytest.param({"mode": "keyset"}, "keyset", id="keyset"),
        pytest.param({"copy_mode": True}, "copy", id="copy", marks=needs_psycopg3),
        pytest.param({"copy_mode": None}, "copy", id="copy-by-default", marks=needs_psycopg3),
        pytest.param({}, PG_CURSOR[1], id="prefetch-text"),
        pytest.param({"database_formatting": False}, PG_CURSOR[1], id="prefetch-python"),
        pytest.param({"prefetch": False}, "cursor", id="cursor-text"),
    ],
)
def test_every_reader_gives_the_bytes_of_the_plain_path(db_alias, options, name):
    make_records(db_alias, 120)
    queryset = Record.objects.using(db_alias).order_by("id")

    def export(**extra):
        extra.setdefault("copy_mode", False)
        built = build_plan(
            queryset, fields=SAME_FIELDS, using=db_alias, chunk_size=25, buffer_size=2048, **extra
        )
        stream = ExportStream(built)
        return stream, b"".join(stream)

    plain, expected = export(prefetch=False, database_formatting=False)
    assert plain.reader.name == "cursor" and not plain.reader.text_cells
    stream, data = export(**options)
    if db_alias == "sqlite" and name != "keyset":
        name = "cursor"  # SQLite has no COPY and cannot prefetch
    assert stream.reader.name == name
    assert data == expected
    assert len(parse_csv(data)) == 121
    assert stream.rows == 120
    assert stream.outcome == "complete"


# --- a reader of one's own, from ExportStream.get_reader() ------------------------------------


class CountingReader(CursorReader):
    """Django's cursor, counting the batches it fetches."""

    name = "counting cursor"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def fetch(self, cursor, sql, params, sizes):
        for batch in super().fetch(cursor, sql, params, sizes):
            self.batches.append(len(batch))
            yield batch


class CountingStream(ExportStream):
    def get_reader(self):
        plan = self.plan
        query = compile_query(plan.queryset, plan.columns, plan.using)
        return CountingReader(plan, query, reason="counts its batches")


@both_databases
def test_a_reader_from_get_reader_is_used(db_alias, caplog):
    make_records(db_alias, 100)
    built = build_plan(
        Record.objects.using(db_alias).order_by("id"),
        fields=FIELDS,
        using=db_alias,
        chunk_size=10,
        database_formatting=False,
    )
    with caplog.at_level(logging.DEBUG, logger="django_streamexport"):
        stream = CountingStream(built)
    assert type(stream.reader) is CountingReader
    assert "reads with <CountingReader 'counting cursor': counts its batches>" in caplog.text
    data = b"".join(stream)
    # 16 rows first (FIRST_BATCH_ROWS), then chunk_size rows per fetch.
    assert stream.reader.batches == [16, 10, 10, 10, 10, 10, 10, 10, 10, 4]
    assert stream.rows == 100
    plain = ExportStream(build_plan(built.queryset, fields=FIELDS, using=db_alias, prefetch=False))
    assert data == b"".join(plain)
