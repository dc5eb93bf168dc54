"""Parquet through the view and into files, read back with pyarrow and with DuckDB."""

from __future__ import annotations

import datetime
import gc
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.models import DecimalField, ExpressionWrapper, F
from django.db.models.functions import Cast
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from django_streamexport.columns import resolve_columns
from django_streamexport.exceptions import RowLimitExceeded
from django_streamexport.formats import default_format_classes, format_classes_by_name
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.formats.parquet import ParquetFormat, default_compression
from django_streamexport.plan import build_plan
from django_streamexport.sinks import write_to_file
from django_streamexport.streaming import ExportStream
from tests.conftest import (
    body,
    both_databases,
    make_records,
    parse_ndjson,
    plan_stream,
    traced_peak,
)
from tests.testapp.models import Record
from tests.testapp.views import ALL_FIELDS, RecordExport

pytestmark = both_databases

ROOT = Path(__file__).resolve().parent.parent

#: The Arrow type of each exported field of ``RecordExport`` (USE_TZ = True).
EXPECTED_TYPES = {
    "id": pa.int64(),
    "title": pa.string(),
    "body": pa.string(),
    "status": pa.string(),  # choices_display: the label
    "count": pa.int64(),
    "amount": pa.decimal128(12, 2),
    "ratio": pa.float64(),
    "flag": pa.bool_(),
    "created": pa.timestamp("us", tz="UTC"),
    "day": pa.date32(),
    "at": pa.time64("us"),
    "took": pa.duration("us"),
    "key": pa.string(),
    "data": pa.string(),
    "author__name": pa.string(),
    "author__country__name": pa.string(),
}
#: How DuckDB reads the same columns (DESCRIBE's types).
DUCKDB_TYPES = {
    **dict.fromkeys(
        ["title", "body", "status", "key", "data", "author__name", "author__country__name"],
        "VARCHAR",
    ),
    "id": "BIGINT",
    "count": "BIGINT",
    "amount": "DECIMAL(12,2)",
    "ratio": "DOUBLE",
    "flag": "BOOLEAN",
    "created": "TIMESTAMP WITH TIME ZONE",
    "day": "DATE",
    "took": "BIGINT",  # Parquet has no duration type: microseconds
}


def export(alias: str, query: str = "?format=parquet", format_kwargs=None, **attrs):
    """Return the response of ``RecordExport`` (every field) reading ``alias``."""
    attrs["using"] = alias
    if format_kwargs is not None:
        attrs["format_options"] = {"parquet": format_kwargs}
    view = type("AliasRecordExport", (RecordExport,), attrs)
    return view.as_view()(RequestFactory().get("/records/export/" + query))


def export_to_file(alias: str, path: Path, *, queryset=None, fields=ALL_FIELDS, **options) -> int:
    """Write the Parquet export of ``fields`` into ``path`` as the command does; return bytes."""
    queryset = Record.objects.using(alias).order_by("id") if queryset is None else queryset
    plan = build_plan(queryset, fields=fields, format="parquet", using=alias, **options)
    with open(path, "wb") as file:
        return write_to_file(ExportStream(plan), file)


def expected_columns(records: list[Record]) -> dict[str, list]:
    """Return the values the database holds, column by column, as Parquet should carry them."""
    author = [r.author for r in records]
    return {
        "id": [r.id for r in records],
        "title": [r.title for r in records],
        "body": [r.body for r in records],
        "status": [r.get_status_display() for r in records],
        "count": [r.count for r in records],
        "amount": [r.amount for r in records],
        "ratio": [r.ratio for r in records],
        "flag": [r.flag for r in records],
        "created": [r.created for r in records],
        "day": [r.day for r in records],
        "at": [r.at for r in records],
        "took": [r.took for r in records],
        "key": [str(r.key) for r in records],
        "data": [r.data for r in records],  # compared parsed, and as compact text below
        "author__name": [a and a.name for a in author],
        "author__country__name": [a and a.country and a.country.name for a in author],
    }


def compact_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def assert_pyarrow_matches(path: Path, records: list[Record]) -> None:
    """Read ``path`` with pyarrow and compare it with ``records``, column by column."""
    table = pq.read_table(path)
    assert table.schema.names == list(EXPECTED_TYPES)
    assert {f.name: f.type for f in table.schema} == EXPECTED_TYPES
    expected = expected_columns(records)
    for name, values in expected.items():
        got = table.column(name).to_pylist()
        if name == "data":
            assert [None if v is None else json.loads(v) for v in got] == values
            assert got == [None if v is None else compact_json(v) for v in values]
        else:
            assert got == values, name  # decimals exact, datetimes the same instants
    created = [v for v in table.column("created").to_pylist() if v is not None]
    assert created and all(v.utcoffset() == datetime.timedelta(0) for v in created)
    assert None in table.column("amount").to_pylist()  # NULLs stay NULL


def assert_duckdb_matches(path: Path, records: list[Record]) -> None:
    """Read ``path`` with DuckDB and compare it with ``records``, column by column."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        source = f"read_parquet('{path}')"
        described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        types = {row[0]: row[1] for row in described}
        assert list(types) == list(EXPECTED_TYPES)
        for name, duck_type in DUCKDB_TYPES.items():
            assert types[name] == duck_type, name
        assert types["at"] in ("TIME", "TIME WITH TIME ZONE")  # pyarrow >= 26 writes local TIME
        # Instants as microseconds since the epoch: no time zone conversion in Python.
        columns = [f'"{name}"' for name in EXPECTED_TYPES if name not in ("created", "at")]
        rows = con.execute(
            f'SELECT {", ".join(columns)}, epoch_us("created"), CAST("at" AS TIME) FROM {source}'
        ).fetchall()
    finally:
        con.close()
    names = [name for name in EXPECTED_TYPES if name not in ("created", "at")]
    got = {name: [row[i] for row in rows] for i, name in enumerate(names)}
    got["created"] = [row[-2] for row in rows]
    got["at"] = [row[-1] for row in rows]
    expected = expected_columns(records)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    micro = datetime.timedelta(microseconds=1)
    expected["created"] = [None if v is None else (v - epoch) // micro for v in expected["created"]]
    expected["took"] = [None if v is None else v // micro for v in expected["took"]]
    for name, values in expected.items():
        if name == "data":
            assert [None if v is None else json.loads(v) for v in got[name]] == values
        else:
            assert got[name] == values, name
    assert any(isinstance(v, Decimal) for v in got["amount"])


# --- through the view ---------------------------------------------------------------


def test_the_view_offers_parquet_where_pyarrow_is_installed():
    offered = format_classes_by_name(RecordExport().get_format_classes())
    assert offered["parquet"] is ParquetFormat
    assert list(RecordExport().get_format_classes()) == list(default_format_classes())


def test_the_real_url_serves_parquet(client, tmp_path):
    records = make_records("default")
    response = client.get("/records/export/?format=parquet")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apache.parquet"  # binary: no charset
    assert response["Content-Disposition"] == 'attachment; filename="records.parquet"'
    path = tmp_path / "records.parquet"
    path.write_bytes(body(response))
    assert_pyarrow_matches(path, records)


def test_view_export_reads_back_in_pyarrow_and_duckdb(db_alias, tmp_path):
    records = make_records(db_alias)
    data = body(export(db_alias))
    assert data[:4] == data[-4:] == b"PAR1"
    path = tmp_path / "records.parquet"
    path.write_bytes(data)
    assert_pyarrow_matches(path, records)
    assert_duckdb_matches(path, records)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == len(records)
    assert metadata.row_group(0).column(0).compression == default_compression().upper() == "ZSTD"


def test_parquet_holds_the_ndjson_records(db_alias, tmp_path):
    """Same rows and keys as NDJSON; values typed instead of spelled."""
    make_records(db_alias)
    path = tmp_path / "records.parquet"
    path.write_bytes(body(export(db_alias)))
    rows = pq.read_table(path).to_pylist()
    ndjson = parse_ndjson(body(export(db_alias, "?format=ndjson")))
    assert [list(row) for row in rows] == [list(line) for line in ndjson]
    assert [row["amount"] for row in rows] == [
        None if line["amount"] is None else Decimal(line["amount"]) for line in ndjson
    ]
    assert [row["title"] for row in rows] == [line["title"] for line in ndjson]
    assert [row["key"] for row in rows] == [line["key"] for line in ndjson]


# --- into a file (write_to_file) ------------------------------------------------------


def test_write_to_file_reads_back_in_pyarrow_and_duckdb(db_alias, tmp_path):
    records = make_records(db_alias, 700)
    path = tmp_path / "records.parquet"
    written = export_to_file(db_alias, path, chunk_size=100, buffer_size=8192)
    assert written == path.stat().st_size
    assert_pyarrow_matches(path, records)
    assert_duckdb_matches(path, records)


def test_the_export_time_zone_leaves_parquet_timestamps_in_utc(db_alias, tmp_path):
    """A timestamp type carries the instant: the same file whatever the export's time zone."""
    records = make_records(db_alias)
    utc_path, zoned_path = tmp_path / "utc.parquet", tmp_path / "zoned.parquet"
    export_to_file(db_alias, utc_path)
    with override_settings(STREAMEXPORT_TIME_ZONE="Asia/Kolkata"):
        export_to_file(db_alias, zoned_path, time_zone="Europe/Berlin")
    assert zoned_path.read_bytes() == utc_path.read_bytes()
    assert_pyarrow_matches(zoned_path, records)


def test_an_empty_export_is_a_valid_file_with_the_schema(db_alias, tmp_path):
    path = tmp_path / "empty.parquet"
    export_to_file(db_alias, path)
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert {f.name: f.type for f in table.schema} == EXPECTED_TYPES
    assert pq.ParquetFile(path).metadata.num_row_groups == 0
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall() == [(0,)]


def test_row_groups_follow_row_group_rows(db_alias, tmp_path):
    records = make_records(db_alias, 1050)
    path = tmp_path / "groups.parquet"
    export_to_file(
        db_alias, path, format_options={"row_group_rows": 100}, chunk_size=64, buffer_size=4096
    )
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 11
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == [100] * 10 + [50]
    assert pq.read_table(path).column("id").to_pylist() == [r.id for r in records]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall() == [(1050,)]


def test_row_groups_end_at_row_group_bytes_whatever_their_rows(db_alias, tmp_path):
    """A 64 KiB byte cap splits 3,000 rows into groups of about 64 KiB of Arrow data."""
    records = make_records(db_alias, 3000)
    cap, slice_bytes = 64 * 1024, 4096
    path = tmp_path / "capped.parquet"
    export_to_file(
        db_alias,
        path,
        format_options={"row_group_rows": 1_000_000, "row_group_bytes": cap},
        chunk_size=64,
        buffer_size=slice_bytes,
    )
    parquet = pq.ParquetFile(path)
    metadata = parquet.metadata
    rows = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    arrow_bytes = [parquet.read_row_group(i).nbytes for i in range(metadata.num_row_groups)]
    assert metadata.num_row_groups >= 4, (rows, arrow_bytes)
    assert sum(rows) == 3000
    # Each full group ended on the slice that passed the cap (slices of ~4 KiB of Arrow
    # data; read back, a column without nulls has no validity bitmap, hence the margin).
    for size in arrow_bytes[:-1]:
        assert 0.9 * cap <= size <= cap + 4 * slice_bytes, arrow_bytes
    assert arrow_bytes[-1] <= cap + 4 * slice_bytes
    assert_pyarrow_matches(path, records)
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall() == [(3000,)]


def test_row_group_bytes_default_is_the_setting(db_alias, tmp_path):
    make_records(db_alias, 1000)
    path = tmp_path / "groups.parquet"
    export_to_file(db_alias, path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    with override_settings(STREAMEXPORT_PARQUET_ROW_GROUP_BYTES=32 * 1024):
        export_to_file(db_alias, path)
    assert pq.ParquetFile(path).metadata.num_row_groups > 3


def test_preload_imports_pyarrow_and_writes_every_type():
    """preload() (deploy/gunicorn.conf.py's post_worker_init) runs in a fresh process."""
    code = (
        "import sys, django; django.setup()\n"
        "assert 'pyarrow' not in sys.modules\n"
        "from django_streamexport.formats.parquet import preload\n"
        "preload()\n"
        "assert 'pyarrow.parquet' in sys.modules\n"
    )
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "example_project")]),
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_row_group_rows_default_is_the_setting(db_alias, tmp_path):
    make_records(db_alias, 250)
    path = tmp_path / "groups.parquet"
    with override_settings(STREAMEXPORT_PARQUET_ROW_GROUP_ROWS=100):
        export_to_file(db_alias, path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 3


def test_the_view_passes_format_options(db_alias, tmp_path):
    make_records(db_alias, 120)
    data = body(export(db_alias, format_kwargs={"row_group_rows": 50, "compression": "snappy"}))
    path = tmp_path / "snappy.parquet"
    path.write_bytes(data)
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 3
    assert metadata.row_group(0).column(0).compression == "SNAPPY"


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compression_options(db_alias, tmp_path, compression):
    records = make_records(db_alias)
    path = tmp_path / f"{compression}.parquet"
    export_to_file(db_alias, path, format_options={"compression": compression})
    expected = "UNCOMPRESSED" if compression == "none" else compression.upper()
    assert pq.ParquetFile(path).metadata.row_group(0).column(3).compression == expected
    assert_pyarrow_matches(path, records)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compression": "bz2"}, "compression must be one of"),
        ({"compression": None, "row_group_rows": 0}, "row_group_rows"),
        ({"row_group_rows": True}, "row_group_rows"),
        ({"row_group_bytes": 0}, "row_group_bytes"),
        ({"row_group_bytes": 1.5}, "row_group_bytes"),
    ],
)
def test_invalid_options_are_refused_before_a_response_starts(db_alias, options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        build_plan(
            Record.objects.using(db_alias), fields=["id"], format="parquet", format_options=options
        )


# --- failures -------------------------------------------------------------------------


def unreadable_in_both(path: Path) -> None:
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(path)
    with pytest.raises(pa.ArrowInvalid):
        pq.ParquetFile(path)
    with pytest.raises(duckdb.Error):
        duckdb.sql(f"SELECT * FROM read_parquet('{path}')").fetchall()


def test_a_truncated_file_fails_to_open_in_both_readers(db_alias, tmp_path):
    make_records(db_alias, 300)
    data = body(export(db_alias, format_kwargs={"row_group_rows": 100}))
    path = tmp_path / "records.parquet"
    for cut in (len(data) - 1, len(data) - 100, len(data) // 2, 4):
        path.write_bytes(data[:cut])
        unreadable_in_both(path)


def test_a_failure_mid_stream_leaves_a_file_without_footer_and_aborts(db_alias, tmp_path):
    make_records(db_alias, 300)
    response = export(db_alias, max_rows=250, format_kwargs={"row_group_rows": 100})
    chunks = []
    with pytest.raises(RowLimitExceeded):
        for chunk in response.streaming_content:
            chunks.append(chunk)
    response.close()
    data = b"".join(chunks)
    assert data.startswith(b"PAR1") and len(data) > 4  # two row groups went out
    path = tmp_path / "cut.parquet"
    path.write_bytes(data)
    unreadable_in_both(path)


def test_a_value_its_column_cannot_hold_fails_the_export_naming_the_column(pg_alias, tmp_path):
    """A Sum-like annotation beyond its field's max_digits: a visible failure, no footer."""
    make_records(pg_alias, 40)
    queryset = (
        Record.objects.using(pg_alias)
        .annotate(
            big=ExpressionWrapper(
                F("amount") * 10**9, output_field=DecimalField(max_digits=12, decimal_places=2)
            )
        )
        .order_by("id")
    )
    path = tmp_path / "cut.parquet"
    with pytest.raises(ValueError, match="'big'"):
        export_to_file(pg_alias, path, queryset=queryset, fields=["id", "big"])
    unreadable_in_both(path)


# --- the first bytes, memory ------------------------------------------------------------


def test_the_magic_leaves_before_the_query_runs(db_alias):
    make_records(db_alias, 50)
    queryset = Record.objects.using(db_alias).order_by("id")
    columns = resolve_columns(queryset, ALL_FIELDS)
    stream = plan_stream(queryset, columns, ParquetFormat(columns), using=db_alias)
    chunks = iter(stream)
    with CaptureQueriesContext(connections[db_alias]) as queries:
        first = next(chunks)
    assert first == b"PAR1"
    assert len(queries) == 0
    rest = b"".join(chunks)
    assert pq.read_table(pa.BufferReader(first + rest)).num_rows == 50


def test_the_view_sends_the_magic_first(db_alias):
    make_records(db_alias, 20)
    response = export(db_alias)
    chunks = iter(response.streaming_content)
    with CaptureQueriesContext(connections[db_alias]) as queries:
        assert next(chunks) == b"PAR1"
    assert len(queries) == 0
    response.close()


def test_slices_are_sized_by_the_rows_not_by_the_compressed_bytes(db_alias):
    """render_rows() mostly returns nothing; slices still grow past the first 16 rows."""
    make_records(db_alias, 2000)
    queryset = Record.objects.using(db_alias).order_by("id")
    columns = resolve_columns(queryset, ALL_FIELDS)
    fmt = ParquetFormat(columns, row_group_rows=100_000)
    sizes = []
    original = fmt.render_rows

    def render_rows(rows):
        sizes.append(len(rows))
        return original(rows)

    fmt.render_rows = render_rows
    stream = plan_stream(queryset, columns, fmt, using=db_alias, buffer_size=64 * 1024)
    chunks = list(stream)
    assert chunks[0] == b"PAR1" and len(chunks) == 2  # the magic, then group and footer
    assert sizes[0] == 16 and max(sizes) > 100
    assert len(sizes) < 40, sizes


#: Arrow memory pools handed to formats in tests: a pool must outlive every format and array
#: that allocated from it (pyarrow crashes otherwise), so they are never freed.
POOLS: list[pa.MemoryPool] = []


def test_memory_does_not_grow_with_rows(pg_alias):
    """Peak memory for 20,000 rows stays close to that for 2,000 (groups of 500 rows).

    Python allocations (tracemalloc: the rows, the compressed bytes) and Arrow's (the
    buffered row group, the writer's pages: a pool of the export's own, ``max_memory()``).
    """
    make_records(pg_alias, 20_000)

    def peak(limit):
        POOLS.append(pool := pa.proxy_memory_pool(pa.default_memory_pool()))
        queryset = Record.objects.using(pg_alias).order_by("id")[:limit]
        columns = resolve_columns(queryset, ALL_FIELDS)
        fmt = ParquetFormat(columns, row_group_rows=500, memory_pool=pool)
        stream = plan_stream(
            queryset, columns, fmt, chunk_size=500, buffer_size=64 * 1024, using=pg_alias
        )
        python_peak, total = traced_peak(stream)
        del stream, fmt
        gc.collect()
        assert pool.bytes_allocated() == 0  # everything freed while the pool lives
        return python_peak, pool.max_memory(), total

    small_peak, small_arrow, small_bytes = peak(2_000)
    large_peak, large_arrow, large_bytes = peak(20_000)
    assert large_bytes > 8 * small_bytes
    # A buffered export would peak at about the whole file (or its Arrow table) here.
    assert large_peak - small_peak < (large_bytes - small_bytes) / 10, (small_peak, large_peak)
    assert large_arrow < 1.5 * small_arrow, (small_arrow, large_arrow)


# --- types ------------------------------------------------------------------------------


def test_decimal_annotations_without_digits_are_exact_text(db_alias, tmp_path):
    make_records(db_alias)
    queryset = (
        Record.objects.using(db_alias)
        .annotate(double=ExpressionWrapper(F("amount") * 2, output_field=DecimalField()))
        .order_by("id")
    )
    path = tmp_path / "annotated.parquet"
    export_to_file(db_alias, path, queryset=queryset, fields=["id", "double"])
    table = pq.read_table(path)
    assert table.schema.field("double").type == pa.string()
    columns = resolve_columns(queryset, ["id", "double"])
    ndjson = parse_ndjson(
        b"".join(plan_stream(queryset, columns, NDJSONFormat(columns), using=db_alias))
    )
    assert table.column("double").to_pylist() == [line["double"] for line in ndjson]


def test_wide_decimals_are_decimal256(pg_alias, tmp_path):
    Record.objects.using(pg_alias).create(amount=Decimal("-1234.50"))
    Record.objects.using(pg_alias).create(amount=None)
    queryset = (
        Record.objects.using(pg_alias)
        .annotate(wide=Cast(F("amount") * 10**30, DecimalField(max_digits=50, decimal_places=3)))
        .order_by("id")
    )
    path = tmp_path / "wide.parquet"
    export_to_file(pg_alias, path, queryset=queryset, fields=["wide"])
    table = pq.read_table(path)
    assert table.schema.field("wide").type == pa.decimal256(50, 3)
    assert table.column("wide").to_pylist() == [
        Decimal("-1234500000000000000000000000000000.000"),
        None,
    ]


def test_datetimes_are_naive_wall_time_without_use_tz(tmp_path):
    alias = "sqlite"
    with override_settings(USE_TZ=False):
        Record.objects.using(alias).create(created=datetime.datetime(2013, 7, 1, 12, 0, 0, 5))
        path = tmp_path / "naive.parquet"
        export_to_file(alias, path, fields=["created"])
    table = pq.read_table(path)
    assert table.schema.field("created").type == pa.timestamp("us")
    assert table.column("created").to_pylist() == [datetime.datetime(2013, 7, 1, 12, 0, 0, 5)]
    con = duckdb.connect()
    assert con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()[0][1] == (
        "TIMESTAMP"
    )
    con.close()


# --- without pyarrow --------------------------------------------------------------------

WITHOUT_PYARROW = """
import importlib.util
import json
import sys


class HidePyarrow:
    '''Wrap a meta path finder; find nothing named pyarrow, as when it is not installed.'''

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "pyarrow" or name.startswith("pyarrow."):
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(name, path, target) if find_spec else None

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [HidePyarrow(finder) for finder in sys.meta_path]
try:
    import pyarrow
except ModuleNotFoundError:
    blocked = True
else:
    blocked = False

import django

django.setup()

from django.core.checks import run_checks

from django_streamexport.formats import default_format_classes

messages = [m for m in run_checks() if m.id.startswith("django_streamexport.")]
from django.test import override_settings

named = [
    "django_streamexport.formats.csv.CSVFormat",
    "django_streamexport.formats.parquet.ParquetFormat",
]
with override_settings(STREAMEXPORT_FORMATS=named):
    named_ids = [m.id for m in run_checks() if m.id.startswith("django_streamexport.")]
print(json.dumps({
    "named_ids": named_ids,
    "blocked": blocked and importlib.util.find_spec("pyarrow") is None,
    "ids": [m.id for m in messages],
    "i001": [m.msg for m in messages if m.id == "django_streamexport.I001"],
    "formats": [cls.format for cls in default_format_classes()],
    "pyarrow_imported": "pyarrow" in sys.modules,
}))
"""


@pytest.mark.django_db(databases=[])
def test_without_pyarrow_parquet_is_not_offered_and_check_i001_says_so():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "example_project")]),
    }
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYARROW],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"]
    assert "django_streamexport.I001" in report["ids"]
    assert report["i001"] == ["Parquet exports are not offered: pyarrow is not installed."]
    assert "parquet" not in report["formats"]
    assert {"csv", "ndjson", "json"} <= set(report["formats"])
    assert not report["pyarrow_imported"]
    # Named in STREAMEXPORT_FORMATS, Parquet must import: E004, and no I001 (not the default).
    assert "django_streamexport.E004" in report["named_ids"]
    assert "django_streamexport.I001" not in report["named_ids"]


def test_with_pyarrow_check_i001_is_silent():
    from django.core.checks import run_checks

    assert "django_streamexport.I001" not in [m.id for m in run_checks()]


def test_offering_parquet_does_not_import_pyarrow():
    """pyarrow (~30 MB per process) is imported by the first Parquet export, not before."""
    code = (
        "import sys, django; django.setup()\n"
        "from django_streamexport.formats import default_format_classes\n"
        "names = [cls.format for cls in default_format_classes()]\n"
        "assert 'parquet' in names, names\n"
        "print('pyarrow' in sys.modules)\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "example_project")])
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
