"""Export views filtered by a django-filter ``FilterSet`` from the query string.

Needs django-filter (``pip install "django-streamexport[filter]"``).  Import
from this module::

    from django_streamexport.contrib.django_filter import FilteredExportView

(``django_streamexport.filters``, the old path, still works but is deprecated.)
The same ``FilterSet`` a list page uses narrows the export::

    class FlightFilter(django_filters.FilterSet):
        class Meta:
            model = Flight
            fields = {"origin": ["exact"], "dep_delay": ["gte", "lte"]}

    class FilteredFlightExport(FilteredExportView):
        model = Flight
        filterset_class = FlightFilter
        export_fields = ["id", "carrier__name", "origin", "dest", "dep_delay"]

    # GET /flights/export/filtered/?format=csv&origin=JFK&dep_delay__gte=60

Invalid filter values are a 400 response carrying the form errors (JSON when
the request accepts ``application/json``, text otherwise), sent before the
stream starts, never a 500 mid-stream.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.http import HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django_filters.constants import ALL_FIELDS
from django_filters.filterset import BaseFilterSet, filterset_factory

from django_streamexport.exceptions import ExportRequestError
from django_streamexport.views import BaseStreamingExportView, StreamingExportMixin

__all__ = ["FilterSetExportMixin", "FilteredExportView", "InvalidFilters"]


class InvalidFilters(ExportRequestError):
    """The query string's filter values do not validate (400).

    ``errors`` is the filterset form's ``ErrorDict`` (field name -> messages).
    """

    def __init__(self, errors: Any) -> None:
        self.errors = errors
        lines = [
            f"{field}: {message}" for field, messages in errors.items() for message in messages
        ]
        super().__init__(_("Invalid filters.") + "\n" + "\n".join(lines))


class FilterSetExportMixin(StreamingExportMixin):
    """Filter the export queryset with a ``FilterSet`` bound to ``request.GET``.

    The attributes and hooks follow django-filter's ``FilterMixin``:
    ``filterset_class``, or ``filterset_fields`` with the view's ``model``
    (default ``"__all__"``), ``get_filterset_class()``, ``get_filterset()``
    and ``get_filterset_kwargs()``; but ``get_filterset_kwargs()`` receives
    the unfiltered queryset, because ``get_queryset()`` here returns the
    filtered one.  Query parameters the filterset does not declare (``format``)
    are ignored; with no filter parameters the export has every row of
    ``get_queryset()``.
    """

    filterset_class: type[BaseFilterSet] | None = None
    filterset_fields: Any = ALL_FIELDS

    #: The bound filterset of the current request, once ``get_queryset()`` ran.
    filterset: BaseFilterSet | None = None

    def get_filterset_class(self) -> type[BaseFilterSet]:
        """Return ``filterset_class``, or one built from ``model`` and ``filterset_fields``."""
        if self.filterset_class is not None:
            return self.filterset_class
        if self.model is not None:
            return filterset_factory(model=self.model, fields=self.filterset_fields)
        raise ImproperlyConfigured(
            f"{type(self).__name__} must define filterset_class or model (with filterset_fields)."
        )

    def get_filterset_kwargs(self, queryset: models.QuerySet) -> dict[str, Any]:
        """Return the filterset's keyword arguments: the query string, request, queryset."""
        return {"data": self.request.GET or None, "request": self.request, "queryset": queryset}

    def get_filterset(
        self, filterset_class: type[BaseFilterSet], queryset: models.QuerySet
    ) -> BaseFilterSet:
        """Return the filterset instance bound to this request."""
        return filterset_class(**self.get_filterset_kwargs(queryset))

    def get_queryset(self) -> models.QuerySet:
        """Return the view's queryset narrowed by the filterset.

        Raises :class:`InvalidFilters` (a 400 response) when the filter
        values do not validate.
        """
        queryset = super().get_queryset()
        self.filterset = filterset = self.get_filterset(self.get_filterset_class(), queryset)
        if filterset.is_bound and not filterset.is_valid():
            raise InvalidFilters(filterset.errors)
        return filterset.qs

    def export_request_error(self, exc: ExportRequestError) -> HttpResponse:
        """Answer invalid filters with their errors as JSON if accepted, else as text."""
        accept = self.request.headers.get("Accept", "")
        if isinstance(exc, InvalidFilters) and "application/json" in accept:
            return JsonResponse({"errors": exc.errors.get_json_data()}, status=exc.status_code)
        return super().export_request_error(exc)


class FilteredExportView(FilterSetExportMixin, BaseStreamingExportView):
    """Stream a queryset filtered by a ``FilterSet`` from the query string."""
