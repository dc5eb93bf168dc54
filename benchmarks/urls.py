"""The views the benchmark serves: our export, the Django docs recipe, a buffered response.

``/export/<dataset>/?format=csv|ndjson[&copy=1][&cursor=1][&python=1]`` is
django-streamexport's view;
``/recipe/<dataset>/`` is the Django docs "Streaming large CSV files" recipe (an ``Echo``
pseudo-buffer and ``csv.writer`` over ``values_list().iterator()``); ``/buffered/<dataset>/``
writes the whole CSV into an ``HttpResponse``; ``/ping/`` answers ``ok`` (warm-up).
"""

from __future__ import annotations

import csv

from django.http import HttpResponse, StreamingHttpResponse
from django.urls import path

from benchmarks.datasets import dataset
from django_streamexport.columns import resolve_columns
from django_streamexport.views import StreamingExportView


class BenchExport(StreamingExportView):
    """Our export of any data set with the library's defaults (CSV: COPY where it gives the
    same bytes): ``?copy=1`` requires COPY (no fall-back), ``?cursor=1`` opts out of it
    (the cursor path), ``?python=1`` turns database formatting off (and COPY with it)."""

    def get_queryset(self):
        return dataset(self.kwargs["dataset"])[0]

    def get_export_fields(self):
        return dataset(self.kwargs["dataset"])[1]

    def get_copy_mode(self):
        if self.request.GET.get("copy"):
            return "require"
        if self.request.GET.get("cursor") or self.request.GET.get("python"):
            return False
        return None  # the default: STREAMEXPORT_COPY_MODE

    def get_export_plan_kwargs(self):
        # ?python=1: every value formatted in Python (no database formatting).
        return {
            **super().get_export_plan_kwargs(),
            "database_formatting": not self.request.GET.get("python"),
        }


def header(name: str) -> list[str]:
    queryset, fields = dataset(name)
    return [column.label for column in resolve_columns(queryset, fields)]


class Echo:
    """An object that implements just the write method of the file-like interface."""

    def write(self, value):
        """Write the value by returning it, instead of storing in a buffer."""
        return value


def recipe(request, dataset_name):
    """The Django docs recipe ("How to create CSV output", streaming large CSV files)."""
    queryset, fields = dataset(dataset_name)
    rows = queryset.values_list(*fields).iterator()
    writer = csv.writer(Echo())

    def content():
        yield writer.writerow(header(dataset_name))
        for row in rows:
            yield writer.writerow(row)

    return StreamingHttpResponse(
        content(),
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="recipe.csv"'},
    )


def buffered(request, dataset_name):
    """The naive export: the whole CSV written into one ``HttpResponse``."""
    queryset, fields = dataset(dataset_name)
    response = HttpResponse(
        content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="buffered.csv"'},
    )
    writer = csv.writer(response)
    writer.writerow(header(dataset_name))
    for row in queryset.values_list(*fields):
        writer.writerow(row)
    return response


def import_export(request, dataset_name):
    """django-import-export: ``ModelResource.export(queryset).csv`` (or ``.xlsx`` with
    ``?format=xlsx``, tablib's openpyxl workbook) into one response."""
    from import_export.resources import modelresource_factory

    queryset, fields = dataset(dataset_name)
    resource = modelresource_factory(queryset.model, meta_options={"fields": fields})()
    exported = resource.export(queryset=queryset)
    if request.GET.get("format") == "xlsx":
        return HttpResponse(
            exported.xlsx,
            content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        )
    return HttpResponse(exported.csv, content_type="text/csv")


def ping(request):
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [
    path("export/<str:dataset>/", BenchExport.as_view()),
    path("recipe/<str:dataset_name>/", recipe),
    path("buffered/<str:dataset_name>/", buffered),
    path("import-export/<str:dataset_name>/", import_export),
    path("ping/", ping),
]
