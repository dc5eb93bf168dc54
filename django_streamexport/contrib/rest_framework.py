"""Stream a Django REST Framework list endpoint as CSV or NDJSON.

Needs DRF (``pip install "django-streamexport[drf]"``).  Add the mixin to a
list view; ``?format=csv`` / ``?format=ndjson`` (DRF's ``URL_FORMAT_OVERRIDE``)
or an ``Accept: text/csv`` / ``application/x-ndjson`` header selects a
streaming export of the view's queryset, after DRF's authentication,
permissions, throttles and filter backends (``filter_queryset()``); other
formats answer as usual::

    class FlightList(StreamingExportAPIMixin, generics.ListAPIView):
        queryset = Flight.objects.all()
        serializer_class = FlightSerializer
        permission_classes = [IsAuthenticated]
        filter_backends = [DjangoFilterBackend, OrderingFilter]
        filterset_fields = ["origin", "carrier"]
        export_fields = ["id", "carrier__name", "origin", "dest", "dep_delay"]

The export skips the serializer and pagination: rows are read with
``values_list()`` over a server-side cursor and rendered by this package's
formats, so the body is the same as a ``StreamingExportView``'s for the same
queryset and fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.http import HttpResponseBase
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from django_streamexport.columns import ExportField, resolve_columns
from django_streamexport.conf import conf
from django_streamexport.formats.base import ExportFormat
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.responses import export_response
from django_streamexport.streaming import ExportStream

__all__ = ["CSVExportRenderer", "ExportRenderer", "NDJSONExportRenderer", "StreamingExportAPIMixin"]


class ExportRenderer(BaseRenderer):
    """A DRF renderer that marks a request for a streaming export in ``export_format_class``.

    Content negotiation picks it like any renderer; the list view then streams
    instead of serializing.  ``render()`` only renders what is not an export
    (an error such as a 403's ``{"detail": ...}``) as ``key: value`` lines.
    """

    export_format_class: ClassVar[type[ExportFormat]]
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if data is None:
            return b""
        if isinstance(data, Mapping):
            return "".join(f"{key}: {value}\n" for key, value in data.items()).encode()
        return f"{data}\n".encode()


class CSVExportRenderer(ExportRenderer):
    """Select a streamed CSV export (``?format=csv`` or ``Accept: text/csv``)."""

    export_format_class = CSVFormat
    media_type = "text/csv"
    format = "csv"


class NDJSONExportRenderer(ExportRenderer):
    """Select a streamed NDJSON export (``?format=ndjson`` or ``Accept: application/x-ndjson``)."""

    export_format_class = NDJSONFormat
    media_type = "application/x-ndjson"
    format = "ndjson"


class StreamingExportAPIMixin:
    """Stream ``list()`` when an :class:`ExportRenderer` was negotiated.

    Mix into a ``GenericAPIView`` with ``ListModelMixin`` (``ListAPIView``,
    ``ModelViewSet``).  Attributes, each with a ``get_*()`` hook:
    ``export_fields`` (default: the serializer's ``Meta.fields`` when it is a
    list), ``export_labels``, ``export_renderer_classes`` (appended to the
    view's renderers), ``export_filename`` (default: the model's
    ``verbose_name_plural``), ``export_chunk_size``, ``export_buffer_size``,
    ``export_using``.  ``HEAD`` gets the headers and never runs the query.
    """

    export_fields: Sequence[ExportField] | None = None
    export_labels: Mapping[str, str] | None = None
    export_renderer_classes: Sequence[type[ExportRenderer]] = (
        CSVExportRenderer,
        NDJSONExportRenderer,
    )
    export_filename: str | None = None
    export_chunk_size: int | None = None
    export_buffer_size: int | None = None
    export_using: str | None = None
    export_stream_class: type[ExportStream] = ExportStream

    # Provided by GenericAPIView.
    request: Request
    get_queryset: Any
    filter_queryset: Any
    get_serializer_class: Any

    def get_renderers(self) -> list[BaseRenderer]:
        """Return the view's renderers plus the export renderers it lacks."""
        renderers: list[BaseRenderer] = super().get_renderers()  # type: ignore[misc]
        present = {type(renderer) for renderer in renderers}
        renderers += [cls() for cls in self.export_renderer_classes if cls not in present]
        return renderers

    def get_export_fields(self) -> Sequence[ExportField]:
        """Return ``export_fields``, else the serializer's ``Meta.fields`` list."""
        if self.export_fields:
            return self.export_fields
        meta = getattr(self.get_serializer_class(), "Meta", None)
        fields = getattr(meta, "fields", None)
        if isinstance(fields, (list, tuple)) and fields:
            return list(fields)
        raise ImproperlyConfigured(
            f"{type(self).__name__} is missing export_fields (and its serializer's Meta.fields "
            "is not a list to take them from)."
        )

    def get_export_labels(self) -> Mapping[str, str]:
        return self.export_labels or {}

    def get_export_filename(self, queryset: models.QuerySet) -> str:
        return self.export_filename or str(queryset.model._meta.verbose_name_plural)

    def get_export_stream(self, renderer: ExportRenderer) -> ExportStream:
        """Return the stream of ``filter_queryset(get_queryset())`` in the renderer's format."""
        queryset = self.filter_queryset(self.get_queryset())
        columns = resolve_columns(queryset, self.get_export_fields(), self.get_export_labels())
        return self.export_stream_class(
            queryset,
            columns,
            renderer.export_format_class(columns),
            chunk_size=self.export_chunk_size or conf.CHUNK_SIZE,
            buffer_size=self.export_buffer_size or conf.BUFFER_SIZE,
            using=self.export_using or conf.DATABASE,
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Stream the export if an export renderer was negotiated, else list as usual."""
        renderer = getattr(request, "accepted_renderer", None)
        if not isinstance(renderer, ExportRenderer):
            return super().list(request, *args, **kwargs)  # type: ignore[misc]
        stream = self.get_export_stream(renderer)
        return export_response(
            stream,
            self.get_export_filename(stream.queryset),
            include_body=request.method != "HEAD",
            request=request._request,
        )
