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
from tests.conftest import body, make_records, parse_csv, parse_ndjson
from tests.testapp.models import Record

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
