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

The export skips the serializer and pagination: it is planned by
:func:`~django_streamexport.plan.build_plan` and answered by
:func:`~django_streamexport.responses.admitted_export_response`, like a
``StreamingExportView``: the same body for the same queryset and fields, the same
admission limits (429), database check (503) and query check (400 for filters the query
compiler or the database refuses), signals carrying the user, COPY mode and keyset mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponseBase
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from django_streamexport.columns import ExportField
from django_streamexport.exceptions import ExportRequestError, FiltersRefused
from django_streamexport.formats import check_format_options, make_format
from django_streamexport.formats.base import ExportFormat
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.formats.xlsx import XLSXFormat
from django_streamexport.plan import ExportPlan, build_plan
from django_streamexport.responses import (
    admit_export,
    admitted_export_response,
    export_error_response,
    user_admission_key,
)
from django_streamexport.streaming import ExportStream

__all__ = [
    "CSVExportRenderer",
    "ExportRenderer",
    "NDJSONExportRenderer",
    "ParquetExportRenderer",
    "StreamingExportAPIMixin",
    "XLSXExportRenderer",
]


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


class XLSXExportRenderer(ExportRenderer):
    """Select a streamed Excel workbook (``?format=xlsx`` or its media type in ``Accept``)."""

    export_format_class = XLSXFormat
    media_type = XLSXFormat.media_type
    format = "xlsx"
    charset = None  # type: ignore[assignment]  # binary: no charset parameter


class ParquetExportRenderer(ExportRenderer):
    """Select a streamed Parquet file (``?format=parquet``; needs the ``[parquet]`` extra).

    Not among the mixin's defaults: add it to ``export_renderer_classes``.
    """

    format = "parquet"
    media_type = "application/vnd.apache.parquet"
    charset = None  # type: ignore[assignment]  # binary: no charset parameter

    @property
    def export_format_class(self) -> type[ExportFormat]:  # type: ignore[override]
        from django_streamexport.formats.parquet import ParquetFormat

        return ParquetFormat


class StreamingExportAPIMixin:
    """Stream ``list()`` when an :class:`ExportRenderer` was negotiated.

    Mix into a ``GenericAPIView`` with ``ListModelMixin`` (``ListAPIView``,
    ``ModelViewSet``).  Attributes, each with a ``get_*()`` hook:
    ``export_fields`` (default: the serializer's ``Meta.fields`` when it is a
    list), ``export_labels``, ``export_renderer_classes`` (appended to the
    view's renderers), ``export_filename`` (default: the model's
    ``verbose_name_plural``), ``export_chunk_size``, ``export_buffer_size``,
    ``export_using``, ``export_mode`` (``"cursor"`` or ``"keyset"``),
    ``export_format_options`` (options by format name), ``export_time_zone``, and
    :meth:`get_export_plan_kwargs` for any other option of
    :func:`~django_streamexport.plan.build_plan`.  ``HEAD`` gets the headers and never
    runs the query.  Past the concurrent export limits the answer is a 429, when the
    database cannot be reached a 503 (plain text, ``Retry-After``), when the query
    compiler or the database refuses the filters' values a 400 (plain text, naming the
    query parameter when it can be told).
    """

    export_fields: Sequence[ExportField] | None = None
    export_labels: Mapping[str, str] | None = None
    export_renderer_classes: Sequence[type[ExportRenderer]] = (
        CSVExportRenderer,
        NDJSONExportRenderer,
        XLSXExportRenderer,
    )
    #: Options of each format, by format name: ``{"csv": {"delimiter": ";", "bom": True}}``.
    export_format_options: Mapping[str, Mapping[str, Any]] | None = None
    export_filename: str | None = None
    export_chunk_size: int | None = None
    export_buffer_size: int | None = None
    export_using: str | None = None
    export_mode: str = "cursor"
    export_keyset_key: str = "pk"
    #: The zone datetimes are written in; ``None`` means ``STREAMEXPORT_TIME_ZONE``.
    export_time_zone: Any = None
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

    def get_export_filename(self) -> str | None:
        """Return ``export_filename``; ``None`` names the file after the queryset's model."""
        return self.export_filename

    def get_export_plan_kwargs(self) -> dict[str, Any]:
        """Return :func:`~django_streamexport.plan.build_plan`'s options for this request.

        Default: the ``export_*`` attributes, the filename and the requesting ``user``;
        ``None`` means the setting.  Override to pass any other option.
        """
        return {
            "using": self.export_using,
            "mode": self.export_mode,
            "keyset_key": self.export_keyset_key,
            "time_zone": self.export_time_zone,
            "chunk_size": self.export_chunk_size,
            "buffer_size": self.export_buffer_size,
            "filename": self.get_export_filename(),
            "user": getattr(self.request, "user", None),
        }

    def get_export_format_options(self) -> Mapping[str, Mapping[str, Any]]:
        """Return the options of each format, by format name. Default: ``export_format_options``.

        A name that no export renderer offers, or an option its format class does not take,
        raises ``ImproperlyConfigured``.
        """
        return self.export_format_options or {}

    def get_export_plan(self, renderer: ExportRenderer) -> ExportPlan:
        """Return the plan of ``filter_queryset(get_queryset())`` in the renderer's format."""
        format_class = renderer.export_format_class
        options = self.get_export_format_options()
        source = f"{type(self).__name__}.export_format_options"
        if options:
            offered = [cls().export_format_class for cls in self.export_renderer_classes]
            check_format_options(offered, options, source=source)
        return build_plan(
            self.filter_queryset(self.get_queryset()),
            fields=self.get_export_fields(),
            labels=self.get_export_labels(),
            export_format=lambda columns: make_format(
                format_class, columns, options.get(format_class.format), source=source
            ),
            **self.get_export_plan_kwargs(),
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponseBase:
        """Stream the export if an export renderer was negotiated, else list as usual."""
        renderer = getattr(request, "accepted_renderer", None)
        if not isinstance(renderer, ExportRenderer):
            return super().list(request, *args, **kwargs)  # type: ignore[misc]
        django_request = request._request
        try:
            stream = self.export_stream_class(self.get_export_plan(renderer))
            return admitted_export_response(
                stream,
                admit_export(user_admission_key(request)),
                include_body=request.method != "HEAD",
                request=django_request,
            )
        except FiltersRefused as exc:
            return export_error_response(exc.naming(request.query_params))
        except ExportRequestError as exc:
            return export_error_response(exc)
