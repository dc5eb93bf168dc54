"""django-filter: FilteredExportView narrows the export by the query string; bad values are 400;
the old import path, django_streamexport.filters, still works with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import sys

import django_filters
import pytest
from django.urls import path

from django_streamexport.contrib import django_filter
from django_streamexport.contrib.django_filter import FilteredExportView
from tests.conftest import body, make_records, parse_csv, parse_ndjson
from tests.testapp.models import Record

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.test_contrib_django_filter"),
]


class RecordFilter(django_filters.FilterSet):
    class Meta:
        model = Record
        fields = {"status": ("exact",), "count": ("gte", "lte"), "day": ("gte",)}


class RecordFilteredExport(FilteredExportView):
    model = Record
    filterset_class = RecordFilter
    export_fields = ("id", "status", "count", "day")


class RecordFieldsExport(FilteredExportView):
    model = Record
    filterset_fields = ("status", "author__name")
    export_fields = ("id", "title")


urlpatterns = [
    path("filtered/", RecordFilteredExport.as_view()),
    path("fields/", RecordFieldsExport.as_view()),
]


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_filters_from_the_query_string(client, fmt):
    records = make_records("default")
    response = client.get("/filtered/", {"format": fmt, "status": "p", "count__gte": "-5000"})
    assert response.status_code == 200
    data = body(response)
    ids = (
        [int(row[0]) for row in parse_csv(data)[1:]]
        if fmt == "csv"
        else [line["id"] for line in parse_ndjson(data) if "id" in line]
    )
    expected = [
        r.id for r in records if r.status == "p" and r.count is not None and r.count >= -5000
    ]
    assert ids == expected
    assert 0 < len(expected) < len(records)


def test_no_filter_parameters_exports_everything(client):
    records = make_records("default")
    rows = parse_csv(body(client.get("/filtered/")))
    assert [int(row[0]) for row in rows[1:]] == [r.id for r in records]


def test_filterset_fields_build_a_filterset_from_the_model(client):
    records = make_records("default")
    rows = parse_csv(body(client.get("/fields/", {"author__name": "No country"})))
    assert [int(row[0]) for row in rows[1:]] == [
        r.id for r in records if r.author is not None and r.author.name == "No country"
    ]


def test_invalid_values_are_a_400_with_the_form_errors_as_text(client):
    make_records("default")
    response = client.get("/filtered/", {"count__gte": "many", "day__gte": "someday"})
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    text = response.content.decode()
    assert "count__gte: Enter a number." in text
    assert "day__gte: Enter a valid date." in text
    assert "Content-Disposition" not in response


def test_invalid_values_are_a_400_with_json_errors_when_asked(client):
    response = client.get("/filtered/", {"status": "zz"}, headers={"Accept": "application/json"})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == ["status"]
    assert errors["status"][0]["code"] == "invalid_choice"


def test_the_old_import_path_warns_and_gives_the_same_classes():
    sys.modules.pop("django_streamexport.filters", None)
    with pytest.warns(DeprecationWarning, match=r"django_streamexport\.contrib\.django_filter"):
        filters = importlib.import_module("django_streamexport.filters")
    assert filters.FilteredExportView is django_filter.FilteredExportView
    assert filters.FilterSetExportMixin is django_filter.FilterSetExportMixin
    assert filters.InvalidFilters is django_filter.InvalidFilters
    assert sorted(filters.__all__) == sorted(django_filter.__all__)
