"""The export views over HTTP (Django's test client and RequestFactory)."""

from __future__ import annotations

import pytest
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext

from django_streamexport.columns import Column
from django_streamexport.formats.csv import CSVFormat
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
        get_format_kwargs=lambda self: {"delimiter": ";", "bom": True},
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
