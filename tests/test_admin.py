"""The admin export: actions, the export page, permissions (Django's test client).

Against PostgreSQL in autocommit (``transaction=True``), the production path.
Outputs are parsed with ``csv`` and ``json`` and compared with the database.
"""

from __future__ import annotations

import gc
import warnings
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.models import Count
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils.deprecation import RemovedAfterNextVersionWarning, RemovedInNextVersionWarning

from django_streamexport.admin import ExportModelAdmin, export_as_csv, export_as_ndjson
from django_streamexport.columns import Column
from django_streamexport.limits import export_slots
from tests import settings as test_settings
from tests.conftest import body, make_records, parse_csv, parse_ndjson
from tests.testapp.admin import RecordAdmin
from tests.testapp.models import Record, Tag
from tests.testapp.views import RecordingStream

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/testapp/record/"
EXPORT = "/admin/testapp/record/export/"
EXPORT_FIELDS = list(RecordAdmin.export_fields)


def user_with(*codenames: str, username: str = "staff") -> User:
    """Create a staff user holding the ``testapp`` permissions ``codenames``."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    content_type = ContentType.objects.get_for_model(Record)
    for codename in codenames:
        permission, _ = Permission.objects.get_or_create(
            codename=codename, content_type=content_type, defaults={"name": codename}
        )
        user.user_permissions.add(permission)
    return user


@pytest.fixture
def staff_client(client):
    """A client logged in as a staff user with only the view permission."""
    client.force_login(user_with("view_record"))
    return client


def post_action(client, action, pks=(), *, select_across=False, query=""):
    """Post an admin action as the changelist's form does."""
    data = {
        "action": action,
        "index": "0",
        "select_across": "1" if select_across else "0",
        "_selected_action": [str(pk) for pk in pks],
    }
    return client.post(CHANGELIST + query, data)


def export_rows(response, fmt):
    """Return (header, rows) of a streamed CSV, or (None, records) of NDJSON."""
    assert response.status_code == 200, response.content[:500]
    assert response.streaming
    data = body(response)
    if fmt == "csv":
        rows = parse_csv(data)
        return rows[0], rows[1:]
    return None, parse_ndjson(data)


def ids_of(rows, fmt, position=0):
    return [int(row[position]) if fmt == "csv" else row["id"] for row in rows]


# --- actions ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_action_exports_the_selected_rows(admin_client, fmt):
    records = make_records("default", 30)
    selected = [records[i].pk for i in (3, 17, 4, 29)]
    response = post_action(admin_client, f"export_as_{fmt}", selected)
    header, rows = export_rows(response, fmt)
    assert response["Content-Disposition"] == f'attachment; filename="records.{fmt}"'
    expected = list(Record.objects.filter(pk__in=selected).order_by("id"))
    assert ids_of(rows, fmt) == [r.pk for r in expected]
    if fmt == "csv":
        assert header == [
            "ID", "Record title", "Status", "Count", "Amount", "Created", "Author name",
            "Author country country name",
        ]  # fmt: skip
        assert [row[1] for row in rows] == [r.title for r in expected]
    else:
        assert list(rows[0]) == EXPORT_FIELDS
        assert [row["title"] for row in rows] == [r.title for r in expected]
        assert [row["count"] for row in rows] == [r.count for r in expected]
        assert [row["author__name"] for row in rows] == [
            r.author.name if r.author else None for r in expected
        ]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_select_across_exports_the_whole_filtered_and_searched_changelist(admin_client, fmt):
    make_records("default", 450)  # five pages of 100
    query = "?status__exact=p&q=Row"
    expected = list(
        Record.objects.filter(status="p", title__icontains="row")
        .order_by("id")
        .values_list("id", "title")
    )
    assert 100 < len(expected) < 450
    # The form posts the checkboxes of the page it shows, plus select_across=1.
    page = [pk for pk, _ in expected[:100]]
    _, rows = export_rows(
        post_action(admin_client, f"export_as_{fmt}", page, select_across=True, query=query), fmt
    )
    assert ids_of(rows, fmt) == [pk for pk, _ in expected]
    titles = [row[1] for row in rows] if fmt == "csv" else [row["title"] for row in rows]
    assert titles == [title for _, title in expected]


def test_action_without_select_across_keeps_the_filter(admin_client):
    records = make_records("default", 40)
    # A draft selected by a crafted post is not in the "published" changelist: not exported.
    selected = [records[0].pk, records[1].pk, records[3].pk]
    _, rows = export_rows(
        post_action(admin_client, "export_as_ndjson", selected, query="?status__exact=p"), "ndjson"
    )
    assert [row["id"] for row in rows] == [
        r.pk for r in Record.objects.filter(pk__in=selected, status="p").order_by("id")
    ]


def test_select_across_100k_rows_with_default_data_upload_max_number_fields(admin_client):
    """100,000 selected rows: "select all" posts one page of keys, never 100,000 fields."""
    assert not hasattr(test_settings, "DATA_UPLOAD_MAX_NUMBER_FIELDS")
    assert settings.DATA_UPLOAD_MAX_NUMBER_FIELDS == 1000  # Django's default
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_record (title, status, key, count) "
            "SELECT 'bulk ' || n, 'p', gen_random_uuid(), n FROM generate_series(1, 100000) n"
        )
    assert Record.objects.count() == 100_000
    first_page = list(Record.objects.order_by("id").values_list("id", flat=True)[:100])
    with CaptureQueriesContext(connection) as queries:
        _, rows = export_rows(
            post_action(admin_client, "export_as_csv", first_page, select_across=True), "csv"
        )
    assert len(rows) == 100_000
    assert [int(row[0]) for row in rows] == list(
        Record.objects.order_by("id").values_list("id", flat=True)
    )
    assert [int(row[3]) for row in rows[:3]] == [1, 2, 3]
    # No query lists the keys: the export reads the filtered queryset through a cursor.
    assert not any('."id" IN (' in query["sql"] for query in queries.captured_queries)


def test_posting_100k_keys_is_what_the_field_limit_refuses(admin_client):
    """Why select_across: one field per key breaks at DATA_UPLOAD_MAX_NUMBER_FIELDS."""
    response = post_action(admin_client, "export_as_csv", range(1, 1002))
    assert response.status_code == 400


def test_no_action_or_button_without_permission(client):
    make_records("default", 5)
    client.force_login(user_with("view_record"))
    with override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="export"):
        page = client.get(CHANGELIST)
        assert page.status_code == 200
        assert b"export_as_csv" not in page.content
        assert EXPORT.encode() not in page.content
        # Posting anyway is refused before anything streams.
        pk = Record.objects.first().pk
        assert post_action(client, "export_as_csv", [pk]).status_code == 403
        assert post_action(client, "export_as_ndjson", [pk], select_across=True).status_code == 403
        assert client.get(EXPORT).status_code == 403
        assert client.get(EXPORT, {"format": "csv", "fields": "id"}).status_code == 403


def test_view_permission_is_enough_by_default(staff_client):
    make_records("default", 5)
    page = staff_client.get(CHANGELIST)
    assert page.status_code == 200
    assert b'value="export_as_csv"' in page.content
    assert b'value="export_as_ndjson"' in page.content
    assert b"Export selected records as CSV" in page.content
    assert f'href="{EXPORT}"'.encode() in page.content
    _, rows = export_rows(staff_client.get(EXPORT, {"format": "ndjson"}), "ndjson")
    assert len(rows) == 5


def test_no_view_permission_no_export(client):
    client.force_login(user_with("add_record"))
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(EXPORT).status_code == 403
    assert client.get(EXPORT, {"format": "csv"}).status_code == 403
    assert post_action(client, "export_as_csv", [1], select_across=True).status_code == 403


def test_anonymous_users_go_to_the_login_page(client):
    response = client.get(EXPORT, {"format": "csv"})
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="export")
def test_dedicated_export_permission(client):
    make_records("default", 5)
    # Created as a data migration would (Record declares no Meta.permissions).
    client.force_login(user_with("view_record", "export_record"))
    page = client.get(CHANGELIST)
    assert b'value="export_as_csv"' in page.content
    assert EXPORT.encode() in page.content
    page = list(Record.objects.values_list("pk", flat=True))
    _, rows = export_rows(post_action(client, "export_as_csv", page, select_across=True), "csv")
    assert len(rows) == 5
    _, rows = export_rows(client.get(EXPORT, {"format": "csv", "fields": "id"}), "csv")
    assert len(rows) == 5


@override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="export")
def test_export_permission_alone_without_view_is_not_enough(client):
    client.force_login(user_with("export_record"))
    assert client.get(EXPORT).status_code == 403
    assert client.get(EXPORT, {"format": "csv"}).status_code == 403


@pytest.mark.parametrize("mode", ["view", "export"])
def test_superuser_can_always_export(admin_client, mode):
    make_records("default", 3)
    with override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION=mode):
        assert b'value="export_as_ndjson"' in admin_client.get(CHANGELIST).content
        _, rows = export_rows(admin_client.get(EXPORT, {"format": "ndjson"}), "ndjson")
    assert len(rows) == 3


# --- the export page ----------------------------------------------------------------------


def test_button_carries_the_changelist_query(admin_client):
    query = "?status__exact=p&q=row&o=-3&p=2"
    make_records("default", 250)
    page = admin_client.get(CHANGELIST + query)
    url = page.context["streamexport_url"]
    assert url.startswith(EXPORT + "?")
    carried = parse_qs(urlsplit(url).query)["_changelist_filters"][0]
    assert parse_qs(carried) == {"status__exact": ["p"], "q": ["row"], "o": ["-3"]}  # no page


def test_export_page_lists_the_allowed_fields(admin_client):
    page = admin_client.get(EXPORT, {"_changelist_filters": "status__exact=p"})
    assert page.status_code == 200
    assert page.templates[0].name == "admin/django_streamexport/export.html"
    content = page.content.decode()
    assert [c["name"] for c in page.context["columns"]] == EXPORT_FIELDS
    assert all(c["checked"] for c in page.context["columns"])
    for name in EXPORT_FIELDS:
        assert f'name="fields" value="{name}" checked' in content
    assert 'value="body"' not in content
    assert 'name="format" value="csv" checked' in content
    assert 'name="_changelist_filters" value="status__exact=p"' in content
    assert "/admin/testapp/record/?status__exact=p" in content


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_export_page_download_picks_format_and_column_order(admin_client, fmt):
    make_records("default", 60)
    fields = ["author__name", "id", "status", "title"]
    response = admin_client.get(EXPORT, {"format": fmt, "fields": fields})
    header, rows = export_rows(response, fmt)
    expected = list(Record.objects.order_by("id").values_list(*fields))
    if fmt == "csv":
        assert header == ["Author name", "ID", "Status", "Record title"]
        # Formula escaping (STREAMEXPORT_CSV_ESCAPE_FORMULAS) applies to the author's "=HYPERLINK".
        assert [tuple(row) for row in rows] == [
            ("'" + a if a and a[0] == "=" else a or "", str(i), s, t) for a, i, s, t in expected
        ]
    else:
        assert [list(row) for row in rows] == [fields] * len(rows)
        assert [tuple(row.values()) for row in rows] == expected


@pytest.mark.parametrize(
    ("filters", "queryset"),
    [
        ("status__exact=d", lambda qs: qs.filter(status="d").order_by("id")),
        ("q=SUM", lambda qs: qs.filter(title__icontains="sum").order_by("id")),
        (
            "created__year=2013&created__month=2",
            lambda qs: qs.filter(created__year=2013, created__month=2).order_by("id"),
        ),
        # o= counts list_display's columns from 0, the action checkbox first: 3 is "count".
        ("o=-3", lambda qs: qs.order_by("-count", "-pk")),
        (
            "flag__exact=1&q=row&o=2.-3",
            lambda qs: qs.filter(flag=True, title__icontains="row").order_by(
                "status", "-count", "-pk"
            ),
        ),
    ],
    ids=["list-filter", "search", "date-hierarchy", "ordering", "all"],
)
def test_download_streams_exactly_what_the_changelist_shows(admin_client, filters, queryset):
    make_records("default", 2000)
    expected = list(queryset(Record.objects.all()).values_list("id", flat=True))
    assert 0 < len(expected)
    # The changelist itself shows these rows first (same filters, same order).
    changelist = admin_client.get(f"{CHANGELIST}?{filters}")
    assert [r.pk for r in changelist.context["cl"].result_list] == expected[:100]
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(
            EXPORT, {"_changelist_filters": filters, "format": "ndjson", "fields": ["id"]}
        )
        _, rows = export_rows(response, "ndjson")
    assert [row["id"] for row in rows] == expected
    # No COUNT of the table or of the filtered rows, no page.
    sql = " ".join(q["sql"] for q in queries.captured_queries if "testapp_record" in q["sql"])
    assert "COUNT(" not in sql.upper()
    assert " LIMIT " not in sql.upper()


@pytest.mark.parametrize(
    "fields",
    [
        ["body"],  # a model field the admin does not allow
        ["id", "data"],
        ["author__password"],
        ["author"],
        ["pk"],
        ["id", "id"],
        ["../../etc/passwd"],
        ["id\x00"],
        ["title; DROP TABLE testapp_record"],
        ["x" * 5000],
        [""],
        [],
    ],
    ids=lambda f: repr(f)[:30],
)
def test_hostile_or_unlisted_columns_are_a_400(admin_client, fields):
    make_records("default", 3)
    # The form always sends fields="" first, so that nothing checked is told apart from no form.
    response = admin_client.get(EXPORT, {"format": "csv", "fields": ["", *fields]})
    assert response.status_code == 400
    assert not response.streaming
    assert b'class="errornote"' in response.content
    assert Record.objects.count() == 3


@pytest.mark.parametrize("fmt", ["xls", "CSV", "", "\x00", "csv\r\nX-Evil: 1", "x" * 5000])
def test_hostile_formats_are_a_400(admin_client, fmt):
    response = admin_client.get(EXPORT, {"format": fmt, "fields": "id"})
    assert response.status_code == 400
    assert b"Unknown export format" in response.content


@pytest.mark.parametrize(
    "filters",
    ["count=abc", "created__year=notayear", "author__password__startswith=x", "nope=1"],
)
def test_filters_the_changelist_refuses_are_a_400(admin_client, filters):
    make_records("default", 3)
    response = admin_client.get(EXPORT, {"_changelist_filters": filters, "format": "csv"})
    assert response.status_code == 400


def test_head_of_the_download_runs_no_query(admin_client):
    make_records("default", 3)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.head(EXPORT, {"format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert not any("testapp_record" in query["sql"] for query in queries.captured_queries)


# --- hooks and checks -----------------------------------------------------------------------


def test_default_export_fields_are_list_displays_model_fields(rf):
    class DefaultAdmin(ExportModelAdmin):
        list_display = ("__str__", "title", "author__country__name", "tags", "shout", "count")

        @admin.display
        def shout(self, obj):
            return obj.title.upper()

    model_admin = DefaultAdmin(Record, admin.site)
    assert model_admin.get_export_fields(rf.get("/")) == ["title", "author__country__name", "count"]


def test_actions_are_module_level_and_declare_the_export_permission():
    assert list(export_as_csv.allowed_permissions) == ["export"]
    assert list(export_as_ndjson.allowed_permissions) == ["export"]
    assert export_as_csv.short_description == "Export selected %(verbose_name_plural)s as CSV"
    assert export_as_ndjson.short_description == "Export selected %(verbose_name_plural)s as NDJSON"


def test_check_w101_dedicated_permission_not_declared():
    model_admin = RecordAdmin(Record, admin.site)
    assert [e.id for e in model_admin.check() if e.id.startswith("django_streamexport")] == []
    with override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="export"):
        ids = [e.id for e in model_admin.check()]
    assert "django_streamexport.W101" in ids
    # An invalid setting is one settings error (tests/test_checks.py), not one per admin.
    with override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="exprot"):
        ids = [e.id for e in model_admin.check()]
    assert "django_streamexport.E101" not in ids


class AnnotatedRecordAdmin(RecordAdmin):
    """An admin whose get_queryset() annotates across a to-many relation, DISTINCT."""

    export_fields = ("id", "title", "tag_count")

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(tag_count=Count("tags"))
            .distinct()
            .order_by("-tag_count", "id")
        )


def test_distinct_export_keeps_annotations_ordering_and_objects_with_equal_values():
    """A DISTINCT changelist exports each object once, with get_queryset()'s annotations."""
    records = make_records("default", 10)
    Record.objects.update(title="same")  # DISTINCT over the values alone would merge them
    for index, record in enumerate(records[:3]):
        Tag.objects.bulk_create([Tag(record=record, name=f"t{n}") for n in range(index + 1)])
    model_admin = AnnotatedRecordAdmin(Record, admin.site)
    request = RequestFactory().get("/")
    request.user = User.objects.create_superuser("annotated", "a@example.com", "pw")
    queryset = model_admin.get_queryset(request)
    response = model_admin.export_queryset_response(request, queryset, "csv")
    rows = parse_csv(body(response))
    assert rows[0] == ["ID", "Record title", "Tag count"]
    expected = sorted(
        ((-Tag.objects.filter(record=r).count(), r.id) for r in records),
    )
    assert [(int(row[2]), int(row[0])) for row in rows[1:]] == [(-n, pk) for n, pk in expected]


# --- the same guards as the views ---------------------------------------------------------


def test_admin_exports_take_an_admission_slot(admin_client):
    """Past STREAMEXPORT_MAX_CONCURRENT_EXPORTS an admin export is a 429, before streaming."""
    # Earlier tests' unclosed responses give their places back when collected.
    gc.collect()
    assert export_slots.active == 0
    records = make_records("default")
    with override_settings(STREAMEXPORT_MAX_CONCURRENT_EXPORTS=1):
        running = post_action(admin_client, "export_as_csv", [records[0].pk])
        assert running.status_code == 200
        refused = post_action(admin_client, "export_as_ndjson", [records[0].pk])
        assert refused.status_code == 429
        assert refused["Retry-After"] == "10"
        page = admin_client.get(EXPORT, {"format": "csv"})
        assert page.status_code == 429
        body(running)  # the first export ends and gives its place back
        assert post_action(admin_client, "export_as_ndjson", [records[0].pk]).status_code == 200


def test_admin_exports_name_the_user_in_the_signals(admin_client):
    from django_streamexport.signals import export_finished

    records = make_records("default")
    received = []

    def receiver(sender, **kwargs):
        received.append(kwargs)

    export_finished.connect(receiver)
    try:
        body(post_action(admin_client, "export_as_csv", [records[0].pk]))
    finally:
        export_finished.disconnect(receiver)
    assert received[-1]["user"].username == "admin"
    assert received[-1]["outcome"] == "complete"
    assert received[-1]["rows"] == 1


# --- COPY mode, keyset mode and DISABLE_SERVER_SIDE_CURSORS (tests/testapp/urls.py) ---------

#: The export page of RecordingRecordAdmin (cursor mode) and of KeysetRecordAdmin.
RECORDING_ADMIN = "/recording-admin/testapp/record/"
KEYSET_ADMIN = "/keyset-admin/testapp/record/"


@pytest.fixture
def recorded():
    """The streams the recording admins build (RecordingStream.built), in order."""
    RecordingStream.built.clear()
    yield RecordingStream.built
    RecordingStream.built.clear()


def export_rows_of(data, fmt):
    """Return (header, rows) of CSV bytes, or (None, records) of NDJSON bytes."""
    if fmt == "csv":
        rows = parse_csv(data)
        return rows[0], rows[1:]
    return None, parse_ndjson(data)


#: The reader a cursor-mode export on PostgreSQL gets from this driver.
CURSOR_READER = "prefetching cursor" if is_psycopg3 else "cursor"
#: The reader a CSV export on PostgreSQL gets by default: COPY, with psycopg 3.
COPY_READER = "copy" if is_psycopg3 else "cursor"


@pytest.mark.urls("tests.testapp.urls")
@pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3")
@pytest.mark.parametrize("copy_mode", [None, True, "require"], ids=["default", "on", "require"])
def test_admin_export_uses_copy_mode_unless_the_setting_opts_out(admin_client, recorded, copy_mode):
    make_records("default", 300)
    export = RECORDING_ADMIN + "export/"
    params = {"_changelist_filters": "status__exact=p", "format": "csv"}
    with override_settings(STREAMEXPORT_COPY_MODE=False):
        without_copy = body(admin_client.get(export, params))
    settings = {} if copy_mode is None else {"STREAMEXPORT_COPY_MODE": copy_mode}
    with override_settings(**settings):
        response = admin_client.get(export, params)
        assert response.status_code == 200
        with_copy = body(response)
    cursor_stream, copy_stream = recorded
    assert (cursor_stream.plan.copy_mode, cursor_stream.reader.name) == (False, CURSOR_READER)
    # The body came from COPY: the reader that renders, which only COPY mode chooses.
    expected_mode = True if copy_mode is None else copy_mode
    assert (copy_stream.plan.copy_mode, copy_stream.reader.name) == (expected_mode, "copy")
    assert copy_stream.reader.reason == "COPY mode is on"
    assert (copy_stream.outcome, copy_stream.rows) == ("complete", 150)
    assert with_copy == without_copy
    rows = parse_csv(with_copy)
    assert rows[0][0] == "ID"
    assert [int(row[0]) for row in rows[1:]] == list(
        Record.objects.filter(status="p").order_by("id").values_list("id", flat=True)
    )


@pytest.mark.urls("tests.testapp.urls")
@pytest.mark.parametrize(("records", "pages"), [(45, 5), (40, 5), (3, 1)])
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_admin_export_in_keyset_mode_reads_pages(admin_client, recorded, records, pages, fmt):
    make_records("default", records)
    params = {"_changelist_filters": "o=-3", "format": fmt}  # the changelist sorts by -count
    with override_settings(STREAMEXPORT_CHUNK_SIZE=10):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(KEYSET_ADMIN + "export/", params)
            assert response.status_code == 200
            keyset = body(response)
        # Read before the next request: request_started empties the connection's query log.
        sql = [q["sql"] for q in queries.captured_queries]
        by_cursor = body(admin_client.get(RECORDING_ADMIN + "export/", {"format": fmt}))
    # One query per page, each with LIMIT, none holding a cursor.
    selects = [query for query in sql if "testapp_record" in query]
    assert len(selects) == pages
    assert all(query.endswith(" LIMIT 10") for query in selects)
    assert not any("DECLARE" in query for query in sql)
    keyset_stream, cursor_stream = recorded
    assert (keyset_stream.plan.mode, keyset_stream.reader.name) == ("keyset", "keyset")
    assert keyset_stream.reader.pages == pages
    # Cursor mode: CSV through COPY by default (psycopg 3), NDJSON through the cursor.
    assert cursor_stream.reader.name == (COPY_READER if fmt == "csv" else CURSOR_READER)
    # The same rows as cursor mode, ordered by the key whatever the changelist's ordering.
    assert keyset == by_cursor
    _, rows = export_rows_of(keyset, fmt)
    assert ids_of(rows, fmt) == list(Record.objects.order_by("pk").values_list("id", flat=True))


@pytest.mark.urls("tests.testapp.urls")
@pytest.mark.parametrize("entry", ["page", "action"])
def test_disable_server_side_cursors_refuses_cursor_mode_and_keyset_streams(
    admin_client, monkeypatch, recorded, entry
):
    records = make_records("default", 30)
    expected = [r.pk for r in records]

    def export(admin_url):
        if entry == "page":
            return admin_client.get(admin_url + "export/", {"format": "ndjson"})
        data = {"action": "export_as_ndjson", "index": "0", "select_across": "1",
                "_selected_action": [str(expected[0])]}  # fmt: skip
        return admin_client.post(admin_url, data)

    gc.collect()
    assert export_slots.active == 0
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    with pytest.raises(ImproperlyConfigured) as refused:
        export(RECORDING_ADMIN)
    message = str(refused.value)
    assert "DISABLE_SERVER_SIDE_CURSORS" in message
    assert 'export_mode = "keyset"' in message
    assert recorded == []  # refused as its reader is chosen: no stream, no slot, no response
    assert export_slots.active == 0
    response = export(KEYSET_ADMIN)
    _, rows = export_rows(response, "ndjson")
    assert [row["id"] for row in rows] == expected
    (stream,) = recorded
    assert stream.reader.name == "keyset"
    assert stream.plan.using == "default"


# --- bad input: a clear 4xx, never a 500 ------------------------------------------------


@pytest.mark.parametrize("value", ["x", "1.5", "", "\x00", "1\x00"])
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_an_export_action_on_keys_that_are_not_keys_is_a_400(admin_client, fmt, value):
    make_records("default", 3)
    response = post_action(admin_client, f"export_as_{fmt}", [value])
    assert response.status_code == 400
    assert not response.streaming
    assert response.content.decode() == "The selected rows are not valid.\n"


def test_other_actions_keep_djangos_handling(admin_client):
    """Only export actions are checked: delete_selected still reaches its confirmation page."""
    records = make_records("default", 3)
    response = post_action(admin_client, "delete_selected", [records[0].pk])
    assert response.status_code == 200
    assert b"Are you sure" in response.content


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options", "trace"])
def test_the_export_page_answers_only_get_and_head(admin_client, method):
    """Only GET and HEAD download; a POST only queues a background export (_background)."""
    make_records("default", 3)
    response = admin_client.generic(method.upper(), f"{EXPORT}?format=csv&fields=id")
    assert response.status_code == 405
    # POST is allowed for "Run in the background" (the jobs app is installed here).
    assert response["Allow"] == "GET, HEAD, POST"
    assert not response.streaming
    with override_settings(
        INSTALLED_APPS=[app for app in settings.INSTALLED_APPS if app != "django_streamexport.jobs"]
    ):
        response = admin_client.generic(method.upper(), f"{EXPORT}?format=csv&fields=id")
        assert (response.status_code, response["Allow"]) == (405, "GET, HEAD")
    head = admin_client.head(f"{EXPORT}?format=csv&fields=id")
    assert head.status_code == 200


# --- Django versions ----------------------------------------------------------------------


def test_admin_pages_and_export_actions_raise_no_django_deprecation_warning(admin_client):
    """Django 6.1 deprecates get_actions() without ``action_location`` and unpacking or
    indexing what get_action() returns; the mixin uses neither, on any supported Django.

    The export actions are changelist actions: the change form (which offers actions
    of its own from Django 6.1) does not list them.
    """
    records = make_records("default", 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        changelist = admin_client.get(CHANGELIST)
        change_form = admin_client.get(f"{CHANGELIST}{records[0].pk}/change/")
        page = admin_client.get(EXPORT)
        action = post_action(admin_client, "export_as_csv", [records[0].pk])
        _, rows = export_rows(action, "csv")
    deprecations = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (RemovedInNextVersionWarning, RemovedAfterNextVersionWarning))
    ]
    assert deprecations == []
    assert changelist.status_code == change_form.status_code == page.status_code == 200
    choices = [name for name, _ in changelist.context["action_form"].fields["action"].choices]
    assert {"export_as_csv", "export_as_ndjson", "export_as_xlsx"} <= set(choices)
    assert not change_form.context.get("action_form")
    assert ids_of(rows, "csv") == [records[0].pk]


class Breadcrumbs(HTMLParser):
    """The admin's breadcrumbs element (``class="breadcrumbs"``) of a page: its tag, its
    children's tags with their ``aria-current``, its links and its text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tag = ""
        self.children: list[tuple[str, str | None]] = []
        self.links: list[str] = []
        self.text = ""
        self._depth = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if not self.tag and "breadcrumbs" in (attributes.get("class") or "").split():
            self.tag, self._depth = tag, 1
        elif self._depth:
            if self._depth == 1:
                self.children.append((tag, attributes.get("aria-current")))
            if tag == "a":
                self.links.append(attributes["href"])
            self._depth += 1

    def handle_endtag(self, tag):
        if self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.text += data


def test_export_page_breadcrumbs_are_written_as_djangos_own(admin_client):
    """The export page's breadcrumbs have the markup of the running Django's changelist
    (Django 6.1 writes and styles ``<ol class="breadcrumbs">`` of ``<li>``; 5.2 and 6.0
    ``<div class="breadcrumbs">`` of links separated by ``&rsaquo;``), with one crumb more."""
    django_crumbs = Breadcrumbs(admin_client.get(CHANGELIST).content.decode())
    ours = Breadcrumbs(
        admin_client.get(f"{EXPORT}?_changelist_filters=status__exact%3Dp").content.decode()
    )
    assert django_crumbs.tag in ("ol", "div")
    assert ours.tag == django_crumbs.tag
    # Django's changelist: Home, the app, the (current) model; ours: Home, the app,
    # the model's changelist (with its filters), the (current) export page.
    assert {tag for tag, _ in ours.children} == {tag for tag, _ in django_crumbs.children}
    assert ours.children[-1][1] == django_crumbs.children[-1][1]
    assert ("\u203a" in ours.text) == ("\u203a" in django_crumbs.text)
    assert ours.links == [*django_crumbs.links, f"{CHANGELIST}?status__exact=p"]
    assert " ".join(ours.text.replace("\u203a", " ").split()) == "Home Testapp Records Export"


# --- default columns: what the changelist shows (tests/testapp/urls.py) -------------------

#: ListDisplayRecordAdmin: no export_fields, so its columns come from list_display.
LIST_DISPLAY_ADMIN = "/list-display-admin/testapp/record/"


@pytest.mark.urls("tests.testapp.urls")
@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_default_columns_export_choice_labels_and_the_related_key(admin_client, fmt):
    """list_display's "status" shows "Published", so the export writes it, not "p"."""
    records = make_records("default")
    response = admin_client.get(LIST_DISPLAY_ADMIN + "export/", {"format": fmt})
    header, rows = export_rows(response, fmt)
    if fmt == "csv":
        # "__str__" is skipped; the foreign key says that it is the related key.
        assert header == ["Record title", "Status", "Author (ID)", "Count", "Created"]
        assert [row[1] for row in rows] == [r.get_status_display() for r in records]
        assert [row[2] for row in rows] == [str(r.author_id or "") for r in records]
    else:
        assert [list(row) for row in rows] == [
            ["title", "status", "author", "count", "created"]
        ] * len(rows)
        assert [row["status"] for row in rows] == [r.get_status_display() for r in records]
        assert [row["author"] for row in rows] == [r.author_id for r in records]
    assert {"Draft", "Published"} == {r.get_status_display() for r in records}


@pytest.mark.urls("tests.testapp.urls")
def test_default_columns_on_the_export_page_and_in_the_actions(admin_client):
    records = make_records("default", 4)
    page = admin_client.get(LIST_DISPLAY_ADMIN + "export/")
    assert page.status_code == 200
    assert [c["label"] for c in page.context["columns"]] == [
        "Record title",
        "Status",
        "Author (ID)",
        "Count",
        "Created",
    ]
    response = admin_client.post(
        LIST_DISPLAY_ADMIN,
        {"action": "export_as_csv", "index": "0", "_selected_action": [records[1].pk]},
    )
    header, rows = export_rows(response, "csv")
    assert header[1] == "Status"
    assert rows[0][1] == records[1].get_status_display() == "Published"


def test_default_columns_use_the_changelist_display_only_where_one_query_can(rf):
    class DefaultAdmin(ExportModelAdmin):
        list_display = ("title", "status", "author", "author__country", "author__country__name")

    fields = DefaultAdmin(Record, admin.site).get_export_fields(rf.get("/"))
    assert fields == [
        "title",
        Column("status", choices_display=True),
        Column("author", label="Author (ID)"),
        Column("author__country", label="Author country (ID)"),
        "author__country__name",
    ]


def test_str_in_export_fields_is_refused_with_what_to_do_instead(rf):
    class StrAdmin(ExportModelAdmin):
        export_fields = ("__str__", "title")

    model_admin = StrAdmin(Record, admin.site)
    with pytest.raises(ImproperlyConfigured, match=r"__str__\(\) is computed in Python") as info:
        model_admin.get_export_columns(rf.get("/"), Record.objects.all())
    assert "Export the fields it is built from" in str(info.value)
    assert "no field named ''" not in str(info.value)


# --- format options, by format name ---------------------------------------------------------


def test_export_format_options_apply_to_their_format_only(rf):
    class OptionsAdmin(RecordAdmin):
        export_format_options = {"csv": {"delimiter": ";", "bom": True}}

    records = make_records("default", 3)
    model_admin = OptionsAdmin(Record, admin.site)
    request = rf.get("/")
    request.user = User.objects.create_superuser("options", "o@example.com", "pw")
    queryset = Record.objects.order_by("id")
    csv_data = body(model_admin.export_queryset_response(request, queryset, "csv", ["id", "title"]))
    assert csv_data.startswith(b"\xef\xbb\xbfID;Record title\r\n")
    ndjson = body(model_admin.export_queryset_response(request, queryset, "ndjson", ["id"]))
    assert parse_ndjson(ndjson) == [{"id": r.id} for r in records]
    OptionsAdmin.export_format_options = {"xlsx": {"delimiter": ";"}}
    with pytest.raises(ImproperlyConfigured, match=r"\['xlsx'\] gives XLSXFormat"):
        model_admin.export_queryset_response(request, queryset, "csv", ["id"])


# --- the time zone ----------------------------------------------------------------------------


def test_export_time_zone_current_is_the_zone_the_changelist_shows(admin_client):
    """With a middleware's timezone.activate(), "current" is the request's zone."""
    import datetime

    from django.utils import timezone

    class LocalRecordAdmin(RecordAdmin):
        export_time_zone = "current"

    Record.objects.create(
        created=datetime.datetime(2013, 7, 1, 5, 30, tzinfo=datetime.timezone.utc)
    )
    request = RequestFactory().get("/")
    request.user = User.objects.create_superuser("local", "l@example.com", "pw")
    model_admin = LocalRecordAdmin(Record, admin.site)
    with timezone.override("Europe/Berlin"):
        response = model_admin.export_queryset_response(
            request, Record.objects.all(), "csv", ["created"]
        )
    assert parse_csv(body(response)) == [["Created"], ["2013-07-01T07:30:00+02:00"]]
    # The default (STREAMEXPORT_TIME_ZONE = None): UTC, as the database returns it.
    with timezone.override("Europe/Berlin"):
        response = RecordAdmin(Record, admin.site).export_queryset_response(
            request, Record.objects.all(), "csv", ["created"]
        )
    assert parse_csv(body(response))[1] == ["2013-07-01T05:30:00+00:00"]
