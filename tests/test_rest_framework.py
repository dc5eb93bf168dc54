"""DRF: a list endpoint streams its queryset after permissions and filter backends."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import generics, serializers
from rest_framework.filters import OrderingFilter
from rest_framework.permissions import IsAuthenticated
from rest_framework.test import APIClient

from django_streamexport.contrib.rest_framework import StreamingExportAPIMixin
from django_streamexport.exceptions import RowLimitExceeded
from tests.conftest import body, make_records, parse_csv, parse_ndjson
from tests.testapp.models import Country, Record

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.test_rest_framework"),
]


class RecordSerializer(serializers.ModelSerializer):
    class Meta:
        model = Record
        fields = ("id", "title", "status")


class RecordList(StreamingExportAPIMixin, generics.ListAPIView):
    queryset = Record.objects.all()
    serializer_class = RecordSerializer
    permission_classes = (IsAuthenticated,)
    filter_backends = (DjangoFilterBackend, OrderingFilter)
    filterset_fields = ("status",)
    ordering_fields = ("id",)
    export_fields = ("id", "title", "count", "author__name")
    export_filename = "records"


class SerializerFieldsList(StreamingExportAPIMixin, generics.ListAPIView):
    queryset = Record.objects.all()
    serializer_class = RecordSerializer


urlpatterns = [
    path("api/records/", RecordList.as_view()),
    path("api/plain/", SerializerFieldsList.as_view()),
]


@pytest.fixture
def api():
    client = APIClient()
    client.force_authenticate(User.objects.create(username="reader"))
    return client


def test_permissions_run_before_the_export():
    make_records("default")
    response = APIClient().get("/api/records/?format=csv")
    assert response.status_code == 403
    assert "Content-Disposition" not in response
    assert not response.streaming


def test_csv_streams_the_filtered_and_ordered_queryset(api):
    records = make_records("default")
    response = api.get("/api/records/", {"format": "csv", "status": "p", "ordering": "-id"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
    rows = parse_csv(body(response))
    assert rows[0] == ["ID", "Record title", "Count", "Author name"]
    expected = sorted((r for r in records if r.status == "p"), key=lambda r: -r.id)
    # Text cells are formula-escaped by the CSV format; ids and counts are not.
    assert [(row[0], row[2]) for row in rows[1:]] == [
        (str(r.id), "" if r.count is None else str(r.count)) for r in expected
    ]


def test_ndjson_by_accept_header(api):
    records = make_records("default")
    response = api.get("/api/records/", HTTP_ACCEPT="application/x-ndjson")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    lines = [line for line in parse_ndjson(body(response)) if "id" in line]
    assert [(line["id"], line["title"], line["count"]) for line in lines] == [
        (r.id, r.title, r.count) for r in records
    ]


def test_json_is_still_the_serializer(api):
    records = make_records("default")
    response = api.get("/api/records/", {"status": "d"})
    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [r.id for r in records if r.status == "d"]


def test_invalid_filter_is_a_400_before_streaming(api):
    response = api.get("/api/records/", {"format": "csv", "status": "zz"})
    assert response.status_code == 400
    assert not response.streaming
    assert b"status" in response.content


def test_head_runs_no_export_query(api):
    make_records("default")
    with CaptureQueriesContext(connection) as queries:
        response = api.head("/api/records/?format=csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert body(response) == b""
    assert not [q for q in queries if "testapp_record" in q["sql"]]


def test_export_fields_default_to_the_serializer_fields():
    records = make_records("default")
    client = APIClient()
    rows = parse_csv(body(client.get("/api/plain/?format=csv")))
    assert rows[0] == ["ID", "Record title", "Status"]
    assert [row[0] for row in rows[1:]] == [str(r.id) for r in records]


# --- keyset mode, plan options, the default filename --------------------------------------


class KeysetRecordList(RecordList):
    export_mode = "keyset"
    export_chunk_size = 10


class PlanOptionsRecordList(RecordList):
    def get_export_plan_kwargs(self):
        # Options with no export_* attribute of their own.
        return {**super().get_export_plan_kwargs(), "max_rows": 3, "statement_timeout": 7.5}


class CountrySerializer(serializers.ModelSerializer):
    class Meta:
        model = Country
        fields = ("id", "name")


class CountryList(StreamingExportAPIMixin, generics.ListAPIView):
    queryset = Country.objects.all()
    serializer_class = CountrySerializer


urlpatterns += [
    path("api/keyset/", KeysetRecordList.as_view()),
    path("api/plan-options/", PlanOptionsRecordList.as_view()),
    path("api/countries/", CountryList.as_view()),
]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
@pytest.mark.parametrize("count", [45, 40, 0])
def test_keyset_mode_exports_the_same_rows_as_cursor_mode(api, fmt, count):
    make_records("default", count)
    expected = list(Record.objects.filter(status="p").order_by("id").values_list("id", flat=True))
    assert len(expected) == count // 2
    # Filter backends apply; keyset pages are ordered by the key whatever "ordering" asks.
    with CaptureQueriesContext(connection) as queries:
        response = api.get("/api/keyset/", {"format": fmt, "status": "p", "ordering": "-id"})
        assert response.status_code == 200
        keyset = body(response)
    # Read before the next request: request_started empties the connection's query log.
    sql = [q["sql"] for q in queries.captured_queries]
    pages = [query for query in sql if "testapp_record" in query]
    # Pages of 10 rows, each one query with LIMIT (a short or empty page is the last); the
    # first page's query was planned (EXPLAIN) before the response started.
    assert "; EXPLAIN SELECT " in pages[0]
    assert [query.split()[0] for query in pages[1:]] == ["SELECT"] * (len(expected) // 10 + 1)
    assert all(query.endswith(" LIMIT 10") for query in pages)
    assert not any("DECLARE" in query for query in sql)
    by_cursor = body(api.get("/api/records/", {"format": fmt, "status": "p"}))
    assert keyset == by_cursor
    if fmt == "csv":
        assert [int(row[0]) for row in parse_csv(keyset)[1:]] == expected
    else:
        assert [line["id"] for line in parse_ndjson(keyset) if "id" in line] == expected


def test_plan_kwargs_pass_any_option(api):
    records = make_records("default", 10)
    with CaptureQueriesContext(connection) as queries:
        response = api.get("/api/plan-options/", {"format": "ndjson"})
        assert response.status_code == 200
        chunks = []
        with pytest.raises(RowLimitExceeded):
            for chunk in response.streaming_content:
                chunks.append(chunk)
        response.close()
    # max_rows=3: three rows, then the error record, and the transfer is cut.
    lines = parse_ndjson(b"".join(chunks))
    assert [line["id"] for line in lines[:-1]] == [r.id for r in records[:3]]
    assert lines[-1]["_type"] == "error"
    assert lines[-1]["error"]["code"] == "row_limit"
    # statement_timeout=7.5 s, not the setting's 300 s.
    guards = [q["sql"] for q in queries.captured_queries if "statement_timeout" in q["sql"]]
    assert guards == [
        "SET LOCAL statement_timeout = 7500; SET LOCAL idle_in_transaction_session_timeout = 120000"
    ]


@pytest.mark.parametrize(
    ("url", "model", "filename"),
    [("/api/plain/", Record, "records.csv"), ("/api/countries/", Country, "countrys.csv")],
)
def test_no_export_filename_names_the_file_after_the_models_verbose_name_plural(
    api, url, model, filename
):
    make_records("default", 2)
    assert SerializerFieldsList.export_filename is CountryList.export_filename is None
    response = api.get(url, {"format": "csv"})
    assert response.status_code == 200
    assert str(model._meta.verbose_name_plural) + ".csv" == filename
    assert response["Content-Disposition"] == f'attachment; filename="{filename}"'
    rows = parse_csv(body(response))
    assert [int(row[0]) for row in rows[1:]] == list(
        model.objects.order_by("id").values_list("id", flat=True)
    )


def test_xlsx_streams_a_workbook_of_the_filtered_queryset(api):
    from tests.spreadsheets import read_calamine

    records = make_records("default")
    response = api.get("/api/records/", {"format": "xlsx", "status": "p", "ordering": "-id"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    assert response["Content-Disposition"] == 'attachment; filename="records.xlsx"'
    (sheet,) = read_calamine(body(response))
    assert sheet[0] == ["ID", "Record title", "Count", "Author name"]
    expected = sorted((r for r in records if r.status == "p"), key=lambda r: -r.id)
    assert [(row[0], row[1]) for row in sheet[1:]] == [(float(r.id), r.title) for r in expected]


class ExcelOptionsRecordList(RecordList):
    export_format_options = {"csv": {"delimiter": ";", "bom": True}, "ndjson": {"end_record": True}}


class MisspelledOptionsRecordList(RecordList):
    export_format_options = {"csv": {"delimeter": ";"}}


urlpatterns += [
    path("api/excel-options/", ExcelOptionsRecordList.as_view()),
    path("api/misspelled-options/", MisspelledOptionsRecordList.as_view()),
]


def test_format_options_apply_to_their_format_only(api):
    records = make_records("default", 3)
    csv_data = body(api.get("/api/excel-options/", {"format": "csv"}))
    assert csv_data.startswith(b"\xef\xbb\xbfID;Record title;Count;Author name\r\n")
    lines = parse_ndjson(body(api.get("/api/excel-options/", {"format": "ndjson"})))
    assert [line["id"] for line in lines[:-1]] == [r.id for r in records]
    assert lines[-1] == {"_type": "end", "rows": 3}
    xlsx = api.get("/api/excel-options/", {"format": "xlsx"})
    assert xlsx.status_code == 200
    assert body(xlsx).startswith(b"PK")


def test_format_options_a_format_does_not_take_are_named(api):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=r"MisspelledOptionsRecordList\.export_form"):
        api.get("/api/misspelled-options/", {"format": "ndjson"})


class BerlinRecordList(RecordList):
    export_fields = ("id", "created")
    export_time_zone = "Europe/Berlin"


urlpatterns += [path("api/berlin/", BerlinRecordList.as_view())]


def test_export_time_zone(api):
    import datetime

    Record.objects.create(
        created=datetime.datetime(2013, 1, 1, 5, 30, tzinfo=datetime.timezone.utc)
    )
    lines = parse_ndjson(body(api.get("/api/berlin/", {"format": "ndjson"})))
    assert [line["created"] for line in lines] == ["2013-01-01T06:30:00+01:00"]
