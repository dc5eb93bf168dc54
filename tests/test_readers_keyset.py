"""Keyset pagination, DISABLE_SERVER_SIDE_CURSORS, and reading from another alias."""

from __future__ import annotations

import math

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
from django.db.models import CharField
from django.db.models.expressions import RawSQL
from django.test import RequestFactory, override_settings
from django.test.utils import CaptureQueriesContext

from django_streamexport.columns import resolve_columns
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.views import StreamingExportView
from tests.conftest import (
    both_databases,
    make_records,
    parse_csv,
    plan_stream,
    server_side_cursors,
)
from tests.testapp.models import Author, Record

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


def _view_body(view_class, **initkwargs):
    request = RequestFactory().get("/?format=csv")
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


def test_disable_server_side_cursors_refuses_cursor_mode_and_keyset_works(pg_alias, monkeypatch):
    records = make_records(pg_alias)
    monkeypatch.setitem(connections[pg_alias].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    queryset = Record.objects.all()
    columns = resolve_columns(queryset, FIELDS)
    with pytest.raises(ImproperlyConfigured, match='export_mode = "keyset"'):
        plan_stream(queryset, columns, CSVFormat(columns), chunk_size=10, buffer_size=64)
    # A view in cursor mode fails before any response starts...
    with pytest.raises(ImproperlyConfigured, match="DISABLE_SERVER_SIDE_CURSORS"):
        _view_body(KeysetRecordExport, export_mode="cursor")
    # ...and keyset mode streams.
    data = _view_body(KeysetRecordExport)
    assert [int(row[0]) for row in parse_csv(data)[1:]] == [r.id for r in records]


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
