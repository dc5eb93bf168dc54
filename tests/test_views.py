"""The export views over HTTP (Django's test client and RequestFactory)."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext, override_settings
from django.utils import translation

from django_streamexport.columns import Column
from django_streamexport.formats.csv import CSVFormat, ExcelCSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.views import StreamingExportMixin, StreamingExportView
from tests.conftest import body, both_databases, make_records, parse_csv, parse_ndjson
from tests.testapp.models import Record

pytestmark = both_databases


@pytest.mark.parametrize(
    ("query", "content_type", "filename"),
    [
        ("", "text/csv; charset=utf-8", "records.csv"),
        ("?format=csv", "text/csv; charset=utf-8", "records.csv"),
        ("?format=ndjson", "application/x-ndjson; charset=utf-8", "records.ndjson"),
    ],
)
def test_response_headers(client, query, content_type, filename):
    make_records("default")
    response = client.get("/records/export/" + query)
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == content_type
    assert response["Content-Disposition"] == f'attachment; filename="{filename}"'
    assert response["Cache-Control"] == "no-store"
    assert response["X-Accel-Buffering"] == "no"
    assert len(response["X-Export-Id"]) == 12
    assert not response.has_header("Content-Length")
    data = body(response)
    rows = parse_ndjson(data) if "ndjson" in query else parse_csv(data)[1:]
    assert len(rows) == Record.objects.count()


def test_export_matches_queryset_rows(client):
    records = make_records("default")
    lines = parse_ndjson(body(client.get("/records/export/?format=ndjson")))
    assert [line["id"] for line in lines] == [r.id for r in records]
    assert [line["title"] for line in lines] == [r.title for r in records]


@pytest.mark.parametrize(
    "query", ["?format=xls", "?format=%00", "?format=" + "x" * 5000, "?format=CSV"]
)
def test_unknown_format_is_a_clear_400(client, query):
    response = client.get("/records/export/" + query)
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = response.content.decode()
    assert "Unknown export format" in text
    assert "csv, json, ndjson, parquet, xlsx" in text
    assert len(text) < 200


def test_head_sends_headers_without_running_the_query(client):
    make_records("default")
    with CaptureQueriesContext(connections["default"]) as queries:
        response = client.head("/records/export/?format=csv")
        assert response.status_code == 200
        assert response["Content-Type"] == "text/csv; charset=utf-8"
        assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
        assert body(response) == b""
    assert len(queries) == 0


def test_post_is_not_allowed(client):
    assert client.post("/records/export/").status_code == 405


def view_for(query="", **attrs):
    view_class = type("CustomExport", (StreamingExportView,), attrs)
    request = RequestFactory().get("/export/" + query)
    return view_class.as_view()(request)


def test_labels_default_and_override(db_alias):
    Record.objects.using(db_alias).create(title="t", status="p")
    response = view_for(
        model=Record,
        using=db_alias,
        export_fields=[
            "title",
            Column("status", label="State", choices_display=True),
            "author__name",
        ],
        export_labels={"author__name": "Writer"},
    )
    rows = parse_csv(body(response))
    assert rows == [["Record title", "State", "Writer"], ["t", "Published", ""]]


def test_queryset_attribute_and_filename_default(db_alias):
    Record.objects.using(db_alias).create(title="keep", count=1)
    Record.objects.using(db_alias).create(title="drop", count=2)
    response = view_for(
        "?format=ndjson",
        queryset=Record.objects.filter(count=1),
        using=db_alias,
        export_fields=["title"],
    )
    assert response["Content-Disposition"] == 'attachment; filename="records.ndjson"'
    assert parse_ndjson(body(response)) == [{"title": "keep"}]


def test_hostile_filename_is_cleaned():
    response = view_for(model=Record, export_fields=["id"], filename='../x"\r\ny é')
    assert response["Content-Disposition"] == (
        "attachment; filename=\"x-y_e.csv\"; filename*=UTF-8''x-y%20%C3%A9.csv"
    )


def test_format_classes_and_kwargs_hooks():
    class SemicolonCSV(CSVFormat):
        format = "excel"

    response = view_for(
        "?format=excel",
        model=Record,
        export_fields=["id"],
        format_classes=[SemicolonCSV],
        get_format_kwargs=lambda self, format_class: {"delimiter": ";", "bom": True},
    )
    assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
    assert body(response) == b"\xef\xbb\xbfID\r\n"
    assert (
        view_for(
            "?format=csv", model=Record, export_fields=["id"], format_classes=[SemicolonCSV]
        ).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"export_fields": ["id"]}, "is missing a queryset"),
        ({"model": Record}, "is missing export_fields"),
        ({"model": Record, "export_fields": ["nope"]}, "Cannot export 'nope'"),
        ({"model": Record, "export_fields": ["tags__name"]}, "to-many relation"),
        ({"model": Record, "export_fields": ["id", "id"]}, "declared twice"),
        (
            {"model": Record, "export_fields": [Column("title", choices_display=True)]},
            "has no choices",
        ),
        (
            {"model": Record, "export_fields": ["id"], "format_classes": []},
            "offers no export formats",
        ),
        (
            {"model": Record, "export_fields": ["id"], "format_classes": [object]},
            "not an ExportFormat",
        ),
    ],
)
def test_misconfigured_views_raise_improperly_configured(attrs, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        view_for(**attrs)


def test_mixin_composes_with_login_required(client, django_user_model):
    from django.urls import path
    from django.views import View

    class PrivateExport(LoginRequiredMixin, StreamingExportMixin, View):
        model = Record
        export_fields = ["id", "title"]

        def get_queryset(self):
            return super().get_queryset().filter(title=self.request.user.username)

        def get(self, request):
            return self.render_to_export_response()

    request = RequestFactory().get("/")
    from django.contrib.auth.models import AnonymousUser

    request.user = AnonymousUser()
    response = PrivateExport.as_view()(request)
    assert response.status_code == 302  # to the login page, before anything streams
    user = django_user_model.objects.create_user("alice")
    Record.objects.create(title="alice")
    Record.objects.create(title="bob")
    request.user = user
    rows = parse_csv(body(PrivateExport.as_view()(request)))
    assert rows == [["ID", "Record title"], [str(Record.objects.get(title="alice").id), "alice"]]
    assert path  # imported for readers adapting this to urls.py


def test_filename_defaults_to_the_model_of_get_queryset(db_alias):
    """A view with only get_queryset() (no model or queryset attribute) names the file after
    the model it returns, not "export"."""
    Record.objects.using(db_alias).create(title="t")

    def get_queryset(self):
        return Record.objects.using(db_alias).all()

    response = view_for("?format=csv", get_queryset=get_queryset, export_fields=["title"])
    assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
    assert parse_csv(body(response)) == [["Record title"], ["t"]]


# --- format options: per format ------------------------------------------------------------

#: docs/formats.md's example ("Format options are per format"): CSV for Excel, by name.
EXCEL_OPTIONS = {"csv": {"delimiter": ";", "bom": True}}


@pytest.mark.parametrize("query", ["?format=csv", "?format=ndjson", "?format=xlsx", ""])
def test_format_options_apply_to_their_format_only(query):
    Record.objects.create(title="a,b")
    response = view_for(
        query, model=Record, export_fields=["id", "title"], format_options=EXCEL_OPTIONS
    )
    assert response.status_code == 200
    data = body(response)
    if "ndjson" in query:
        assert [set(row) for row in parse_ndjson(data)] == [{"id", "title"}]
    elif "xlsx" in query:
        assert data.startswith(b"PK")
    else:
        assert data.startswith(b"\xef\xbb\xbfID;Record title\r\n")
        assert data.endswith(b";a,b\r\n")


def test_get_format_kwargs_receives_the_format_class():
    seen = []

    def get_format_kwargs(self, format_class):
        seen.append(format_class)
        return {"delimiter": "|"} if format_class.format == "csv" else {}

    attrs = {"model": Record, "export_fields": ["id", "title"]}
    attrs["get_format_kwargs"] = get_format_kwargs
    assert body(view_for("?format=csv", **attrs)).startswith(b"ID|Record title\r\n")
    assert body(view_for("?format=ndjson", **attrs)) == b""
    assert seen == [CSVFormat, NDJSONFormat]


def test_get_format_kwargs_default_reads_format_options():
    class View(StreamingExportView):
        model = Record
        export_fields = ["id"]
        format_options = {"csv": {"header": False}, "ndjson": {"end_record": True}}

    view = View()
    assert view.get_format_kwargs(CSVFormat) == {"header": False}
    assert view.get_format_kwargs(NDJSONFormat) == {"end_record": True}
    assert view.get_format_kwargs(ExcelCSVFormat) == {}


def test_an_old_get_format_kwargs_is_deprecated_and_named_when_a_format_refuses_it():
    """get_format_kwargs(self) of earlier versions: every format got its options."""
    old = {"get_format_kwargs": lambda self: {"delimiter": ";", "bom": True}}
    with pytest.warns(DeprecationWarning, match="takes no format_class"):
        csv_response = view_for("?format=csv", model=Record, export_fields=["id"], **old)
    assert body(csv_response) == b"\xef\xbb\xbfID\r\n"
    with pytest.warns(DeprecationWarning), pytest.raises(ImproperlyConfigured) as info:
        view_for("?format=ndjson", model=Record, export_fields=["id"], **old)
    message = str(info.value)
    # Not "NDJSONFormat.__init__() got an unexpected keyword argument 'delimiter'".
    assert "CustomExport.get_format_kwargs() gives NDJSONFormat (format 'ndjson'" in message
    assert "'delimiter', 'bom'" in message
    assert "format_options = {'csv':" in message


@pytest.mark.parametrize(
    ("options", "query", "message"),
    [
        ({"cvs": {"bom": True}}, "?format=ndjson", "format 'cvs', which is not offered"),
        ({"csv": {"delimeter": ";"}}, "?format=ndjson", "options it does not take: 'delimeter'"),
        ({"ndjson": {"bom": True}}, "?format=csv", r"\['ndjson'\] gives NDJSONFormat"),
        ({"csv": ";"}, "?format=csv", r"format_options\['csv'\] must be a dict"),
        ([("csv", {})], "?format=csv", "must map format names to options"),
    ],
)
def test_format_options_mistakes_are_named_whatever_the_format_asked(options, query, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        view_for(query, model=Record, export_fields=["id"], format_options=options)


# --- CSV for Excel: one switch --------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "delimiter"),
    [("en", ","), ("en-gb", ","), ("de", ";"), ("fr", ";"), ("pt-br", ";")],
)
def test_csv_excel_has_a_bom_and_the_delimiter_of_the_active_language(language, delimiter):
    Record.objects.create(title="x;y,z")
    with translation.override(language):
        response = view_for(
            "?format=csv-excel",
            model=Record,
            export_fields=["id", "title"],
            format_classes=[CSVFormat, ExcelCSVFormat],
        )
        assert response.status_code == 200
        data = body(response)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
    assert data.startswith(f"\ufeffID{delimiter}Record title\r\n".encode())
    # The title holds both delimiters, so it is quoted whichever one is used.
    assert data.endswith(f'{delimiter}"x;y,z"\r\n'.encode())
    text = io.StringIO(data[3:].decode(), newline="")
    record = Record.objects.get()
    assert list(csv.reader(text, delimiter=delimiter)) == [
        ["ID", "Record title"],
        [str(record.id), "x;y,z"],
    ]


def test_csv_excel_is_offered_where_the_setting_lists_it(client):
    Record.objects.create(title="t")
    assert client.get("/records/export/?format=csv-excel").status_code == 400  # not by default
    formats = [
        "django_streamexport.formats.csv.CSVFormat",
        "django_streamexport.formats.csv.ExcelCSVFormat",
    ]
    with override_settings(STREAMEXPORT_FORMATS=formats, LANGUAGE_CODE="de"):
        response = client.get("/records/export/?format=csv-excel")
        assert response.status_code == 200
        assert body(response).startswith(b"\xef\xbb\xbfID;")


# --- the time zone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "setting", "cell"),
    [
        ({}, None, "2013-07-01T05:30:00+00:00"),
        ({}, "Europe/Berlin", "2013-07-01T07:30:00+02:00"),
        ({"time_zone": "Asia/Kolkata"}, "Europe/Berlin", "2013-07-01T11:00:00+05:30"),
        ({"get_time_zone": lambda self: "America/New_York"}, None, "2013-07-01T01:30:00-04:00"),
        ({"time_zone": "current"}, None, "2013-07-01T14:30:00+09:00"),  # activated below
    ],
)
def test_the_view_writes_datetimes_in_its_time_zone(attrs, setting, cell):
    import datetime

    from django.utils import timezone

    Record.objects.create(
        created=datetime.datetime(2013, 7, 1, 5, 30, tzinfo=datetime.timezone.utc)
    )
    attrs = {"model": Record, "export_fields": ["created"], **attrs}
    with override_settings(STREAMEXPORT_TIME_ZONE=setting), timezone.override("Asia/Tokyo"):
        csv_response = view_for("?format=csv", **attrs)
        ndjson_response = view_for("?format=ndjson", **attrs)
    assert parse_csv(body(csv_response))[1] == [cell]
    assert parse_ndjson(body(ndjson_response)) == [{"created": cell}]
