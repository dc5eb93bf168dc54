"""Keyset pagination, DISABLE_SERVER_SIDE_CURSORS, and reading from another alias."""

from __future__ import annotations

import copy
import math

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.models import CharField
from django.db.models.expressions import RawSQL
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from django_streamexport.columns import resolve_columns
from django_streamexport.exceptions import FiltersRefused
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.responses import check_query
from django_streamexport.views import StreamingExportView
from tests.conftest import (
    both_databases,
    make_records,
    parse_csv,
    parse_ndjson,
    plan_stream,
    server_side_cursors,
)
from tests.servers import HOST, free_port, pgbouncer
from tests.testapp.models import Author, Record
from tests.testapp.views import ALL_FIELDS, RecordingStream

pytestmark = both_databases

FIELDS = ["id", "title", "count"]


def keyset_stream(alias, queryset=None, chunk_size=3, **kwargs):
    queryset = Record.objects.using(alias).all() if queryset is None else queryset
    columns = resolve_columns(queryset, FIELDS)
    if "key" in kwargs:
        kwargs["keyset_key"] = kwargs.pop("key")
    return plan_stream(
        queryset,
        columns,
        CSVFormat(columns),
        mode="keyset",
        chunk_size=chunk_size,
        buffer_size=64,
        using=alias,
        **kwargs,
    )


def make_ties(alias, count):
    """Rows whose non-key columns all tie, inserted in shuffled pk order."""
    Record.objects.using(alias).bulk_create([Record(title="same", count=7) for _ in range(count)])
    return list(Record.objects.using(alias).order_by("id").values_list("id", flat=True))


@pytest.mark.parametrize(("rows", "page"), [(10, 3), (9, 3), (1, 3), (0, 3), (25, 1)])
def test_boundary_rows_are_neither_repeated_nor_skipped(db_alias, rows, page):
    ids = make_ties(db_alias, rows)
    # Order the queryset by a tied column: the key order must win.
    stream = keyset_stream(
        db_alias, Record.objects.using(db_alias).order_by("title"), chunk_size=page
    )
    with CaptureQueriesContext(connections[db_alias]) as queries:
        data = b"".join(stream)
    exported = [int(row[0]) for row in parse_csv(data)[1:]]
    assert exported == ids
    # One query per page, plus one empty page when the last page was full.
    expected_pages = rows // page + 1 if rows % page == 0 else math.ceil(rows / page)
    assert stream.reader.pages == expected_pages
    pages = [q["sql"] for q in queries if "testapp_record" in q["sql"]]
    assert len(pages) == expected_pages
    assert all("LIMIT" in sql for sql in pages)


def test_holds_no_cursor_or_transaction_between_pages(pg_alias):
    make_ties(pg_alias, 10)
    stream = keyset_stream(pg_alias, chunk_size=2)
    iterator = iter(stream)
    next(iterator)  # the header
    next(iterator)  # the first rows: a page was read
    connection = connections[pg_alias]
    assert not connection.in_atomic_block
    assert connection.get_autocommit()
    assert server_side_cursors(pg_alias) == []
    stream.close()


def test_statement_timeout_bounds_each_page(pg_alias):
    """Each page is its own short transaction with SET LOCAL statement_timeout."""
    make_ties(pg_alias, 10)
    queryset = Record.objects.using(pg_alias).annotate(
        slow=RawSQL("pg_sleep(0.2)::text", [], output_field=CharField())
    )
    columns = resolve_columns(queryset, ["id", "slow"])
    stream = plan_stream(
        queryset,
        columns,
        CSVFormat(columns),
        mode="keyset",
        chunk_size=2,
        buffer_size=512,
        using=pg_alias,
        statement_timeout=0.1,
    )
    with CaptureQueriesContext(connections[pg_alias]) as queries:
        with pytest.raises(DatabaseError, match="statement timeout"):
            b"".join(stream)
    assert stream.error_code == "statement_timeout"
    assert any("SET LOCAL statement_timeout = 100" in q["sql"] for q in queries)
    connection = connections[pg_alias]
    assert not connection.in_atomic_block and connection.get_autocommit()
    # The timeout ended with the page's transaction.
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


def test_a_non_unique_or_nullable_key_is_refused(db_alias):
    with pytest.raises(ImproperlyConfigured, match="must be unique and not null"):
        keyset_stream(db_alias, key="title")
    with pytest.raises(ImproperlyConfigured, match="need a key that is a field"):
        keyset_stream(db_alias, key="author__name")


class KeysetRecordExport(StreamingExportView):
    model = Record
    export_fields = FIELDS
    export_mode = "keyset"
    chunk_size = 4


def _view_body(view_class, query="format=csv", **initkwargs):
    request = RequestFactory().get(f"/?{query}")
    response = view_class.as_view(**initkwargs)(request)
    try:
        return b"".join(response.streaming_content)
    finally:
        response.close()


def test_views_choose_keyset_mode_by_attribute(pg_alias):
    records = make_records(pg_alias)
    with CaptureQueriesContext(connections[pg_alias]) as queries:
        data = _view_body(KeysetRecordExport)
    assert [int(row[0]) for row in parse_csv(data)[1:]] == [r.id for r in records]
    assert not any("DECLARE" in q["sql"] for q in queries)
    # Each page is a transaction of its own (the statement timeout), none spans two pages.
    kinds = [q["sql"].split()[0] for q in queries]
    pages = len(records) // KeysetRecordExport.chunk_size + 1
    assert kinds == ["BEGIN", "SET", "SELECT", "COMMIT"] * pages


def test_unknown_export_mode_is_improperly_configured():
    with pytest.raises(ImproperlyConfigured, match='"cursor" or "keyset"'):
        _view_body(KeysetRecordExport, export_mode="pages")


@pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3")
def test_disable_server_side_cursors_reads_csv_by_copy_refuses_other_cursor_exports(
    pg_alias, monkeypatch
):
    records = make_records(pg_alias)
    queryset = Record.objects.all()
    columns = resolve_columns(queryset, FIELDS)
    by_cursor = plan_stream(queryset, columns, CSVFormat(columns), buffer_size=64, copy_mode=False)
    assert by_cursor.reader.name == "prefetching cursor"
    expected = b"".join(by_cursor)
    view_expected = _view_body(KeysetRecordExport, export_mode="cursor")
    monkeypatch.setitem(connections[pg_alias].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    # CSV: COPY needs no server-side cursor, whatever copy_mode says.
    for copy_mode in (False, True, None):
        stream = plan_stream(
            queryset, columns, CSVFormat(columns), buffer_size=64, copy_mode=copy_mode
        )
        assert stream.reader.name == "copy"
        assert "DISABLE_SERVER_SIDE_CURSORS" in stream.reader.reason or copy_mode is not False
        assert b"".join(stream) == expected
    assert _view_body(KeysetRecordExport, export_mode="cursor") == view_expected
    # A row limit streams by COPY too (LIMIT max_rows + 1).
    limited = plan_stream(queryset, columns, CSVFormat(columns), max_rows=len(records))
    assert limited.reader.name == "copy"
    assert b"".join(limited) == expected
    # What COPY cannot write is refused before any response starts, saying why and what to do.
    refusals = {
        "the format is 'ndjson', not CSV": lambda: plan_stream(
            queryset, columns, NDJSONFormat(columns)
        ),
        "column 'data' holds json values, which PostgreSQL spells differently from the CSV "
        "format": lambda: plan_stream(
            queryset,
            resolve_columns(queryset, ["id", "data"]),
            CSVFormat(resolve_columns(queryset, ["id", "data"])),
        ),
        "the format is 'json', not CSV": lambda: _view_body(
            KeysetRecordExport, "format=json", export_mode="cursor"
        ),
    }
    for reason, refused in refusals.items():
        with pytest.raises(ImproperlyConfigured) as info:
            refused()
        assert str(info.value) == (
            "DATABASES['default'] sets DISABLE_SERVER_SIDE_CURSORS, so a cursor export would "
            "load every row into memory, and COPY, which needs no server-side cursor, cannot "
            f'write this export: {reason}. Read it in keyset pages (export_mode = "keyset" on '
            "the view or ModelAdmin, --mode keyset on the command line), or export from an "
            "alias that connects without a transaction-mode pooler (STREAMEXPORT_DATABASE)."
        )
    # ...and keyset mode streams.
    data = _view_body(KeysetRecordExport)
    assert [int(row[0]) for row in parse_csv(data)[1:]] == [r.id for r in records]


# --- through a real PgBouncer in transaction pooling ----------------------------------------

PGBOUNCER = "pgbouncer"
#: Every exported column of the records, but JSON (COPY cannot spell it as Python does).
COPY_FIELDS = [field for field in ALL_FIELDS if field != "data"]


@pytest.fixture(scope="module")
def pgbouncer_alias():
    """Add the alias ``pgbouncer``: the test database through PgBouncer, transaction pooling.

    ``DISABLE_SERVER_SIDE_CURSORS``, as Django asks behind such a pooler; a ``TEST`` mirror
    of ``default`` (the same test database, never flushed through it).  PgBouncer runs on
    a free loopback port for the module and is stopped after Django's connection to it
    is closed.
    """
    with pgbouncer(free_port(), pool_mode="transaction") as bouncer:
        settings_dict = copy.deepcopy(connections["default"].settings_dict)
        settings_dict.update(HOST=HOST, PORT=str(bouncer.port), DISABLE_SERVER_SIDE_CURSORS=True)
        settings_dict["TEST"] = {**settings_dict["TEST"], "MIRROR": "default"}
        connections.settings[PGBOUNCER] = settings_dict
        try:
            yield bouncer
        finally:
            through = getattr(connections._connections, PGBOUNCER, None)
            if through is not None:
                through.close()
                delattr(connections._connections, PGBOUNCER)
            del connections.settings[PGBOUNCER]


class PgBouncerExport(StreamingExportView):
    model = Record
    export_fields = COPY_FIELDS
    using = PGBOUNCER
    stream_class = RecordingStream


@pytest.mark.e2e
@pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3")
@pytest.mark.django_db(transaction=True, databases=["default", PGBOUNCER])
def test_through_pgbouncer_in_transaction_pooling_csv_streams_by_copy(pgbouncer_alias):
    make_records("default", 500)
    queryset = Record.objects.order_by("id")
    columns = resolve_columns(queryset, COPY_FIELDS)
    # The standard path: a server-side cursor on the direct connection.
    direct = plan_stream(queryset, columns, CSVFormat(columns), copy_mode=False)
    assert direct.reader.name == "prefetching cursor"
    expected = b"".join(direct)
    assert len(parse_csv(expected)) == 501
    # Through PgBouncer: COPY, which needs no server-side cursor, byte for byte the same.
    stream = plan_stream(queryset, columns, CSVFormat(columns), using=PGBOUNCER, copy_mode=False)
    assert (stream.reader.name, stream.reader.reason) == (
        "copy",
        "DATABASES['pgbouncer'] sets DISABLE_SERVER_SIDE_CURSORS: COPY needs no server-side cursor",
    )
    assert b"".join(stream) == expected
    assert stream.outcome == "complete"
    # The same through a view, over the HTTP entry point.
    RecordingStream.built.clear()
    request = RequestFactory().get("/?format=csv")
    response = PgBouncerExport.as_view()(request)
    assert response.status_code == 200
    try:
        data = b"".join(response.streaming_content)
    finally:
        response.close()
    (view_stream,) = RecordingStream.built
    RecordingStream.built.clear()
    assert view_stream.reader.name == "copy"
    assert data == expected
    # The rows went through PgBouncer, in transaction pooling, on the test database.
    test_database = connections["default"].settings_dict["NAME"]
    (pool,) = [
        row for row in pgbouncer_alias.admin("SHOW POOLS") if row["database"] == test_database
    ]
    assert pool["pool_mode"] == "transaction"
    (stats,) = [
        row for row in pgbouncer_alias.admin("SHOW STATS") if row["database"] == test_database
    ]
    assert stats["total_xact_count"] >= 2
    # A filtered export's query is planned before the response through PgBouncer too (its
    # SET LOCAL settings and EXPLAIN go as one simple query, one implicit transaction).
    filtered = queryset.filter(title__regex="^row 1")
    stream = plan_stream(filtered, columns, CSVFormat(columns), using=PGBOUNCER)
    check_query(stream)
    rows = parse_csv(b"".join(stream))
    assert [int(row[0]) for row in rows[1:]] == list(filtered.values_list("id", flat=True))
    assert len(rows) > 100
    refused = plan_stream(
        queryset.filter(title__regex="("), columns, CSVFormat(columns), using=PGBOUNCER
    )
    with pytest.raises(FiltersRefused, match="invalid regular expression"):
        check_query(refused)
    refused.close()
    # What COPY cannot write is refused there, and keyset pages work through PgBouncer.
    with pytest.raises(ImproperlyConfigured, match="the format is 'ndjson', not CSV"):
        plan_stream(queryset, columns, NDJSONFormat(columns), using=PGBOUNCER)
    pages = plan_stream(queryset, columns, NDJSONFormat(columns), using=PGBOUNCER, mode="keyset")
    records = parse_ndjson(b"".join(pages))
    assert [record["id"] for record in records] == list(queryset.values_list("id", flat=True))


class RecordsToSQLite:
    """Send Record reads to the ``sqlite`` alias, as a replica router would."""

    def db_for_read(self, model, **hints):
        return "sqlite" if model is Record else None


@pytest.mark.parametrize("mode", ["cursor", "keyset"])
def test_a_router_sends_the_export_to_another_alias(mode):
    on_sqlite = make_records("sqlite")
    make_records("default")  # different ids and rows on the default alias
    Author.objects.using("default").create(name="only on default")
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.RecordsToSQLite"]):
        with CaptureQueriesContext(connections["default"]) as default_queries:
            data = _view_body(KeysetRecordExport, export_mode=mode)
    rows = parse_csv(data)[1:]
    assert [int(row[0]) for row in rows] == [r.id for r in on_sqlite]
    assert [row[2] for row in rows] == ["" if r.count is None else str(r.count) for r in on_sqlite]
    assert not [q for q in default_queries if "testapp_record" in q["sql"]]


def test_using_attribute_wins_over_the_router():
    make_records("sqlite")
    on_default = make_records("default")
    with override_settings(DATABASE_ROUTERS=[f"{__name__}.RecordsToSQLite"]):
        data = _view_body(KeysetRecordExport, using="default")
    assert [int(row[0]) for row in parse_csv(data)[1:]] == [r.id for r in on_default]
