"""Class-based views that stream a queryset as a file download.

Three layers, as in Django's generic views:

* :class:`StreamingExportMixin` holds every hook and binds no HTTP method, so
  it composes with ``LoginRequiredMixin``, ``PermissionRequiredMixin`` and
  other views;
* :class:`BaseStreamingExportView` binds ``GET`` (and ``HEAD``, answered
  without running the query);
* :class:`StreamingExportView` is what projects subclass::

    class FlightExport(StreamingExportView):
        model = Flight
        export_fields = ["id", "carrier__name", "origin__name", "dest", "dep_delay"]
        filename = "flights"

    # GET /flights/export/?format=csv     -> text/csv; charset=utf-8, streamed
    # GET /flights/export/?format=ndjson  -> application/x-ndjson; charset=utf-8
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.generic import View

from django_streamexport.columns import ExportField, ResolvedColumn, resolve_columns
from django_streamexport.conf import conf
from django_streamexport.exceptions import ExportRequestError, UnknownFormat
from django_streamexport.formats import default_format_classes, format_classes_by_name
from django_streamexport.formats.base import ExportFormat
from django_streamexport.responses import export_response
from django_streamexport.streaming import ExportStream

__all__ = ["BaseStreamingExportView", "StreamingExportMixin", "StreamingExportView"]


class StreamingExportMixin:
    """Build a streaming export response from a queryset; binds no HTTP method.

    Every knob is a class attribute with a ``get_*()`` hook to override per
    request.  Call :meth:`render_to_export_response` from a handler.
    """

    #: The model to export; used when neither ``queryset`` nor ``get_queryset()`` is given.
    model: type[models.Model] | None = None
    #: The queryset to export (re-evaluated per request, as in ``ListView``).
    queryset: models.QuerySet | None = None
    #: Lookups (``"carrier__name"``), annotation names or ``Column`` objects. Required.
    export_fields: Sequence[ExportField] | None = None
    #: Header labels by field name, overriding the ``verbose_name`` defaults.
    export_labels: Mapping[str, str] | None = None
    #: Format classes offered; ``None`` means ``STREAMEXPORT_FORMATS``. The first is the default.
    format_classes: Sequence[type[ExportFormat]] | None = None
    #: The query parameter that selects a format by name.
    format_query_param = "format"
    #: The download name without extension; ``None`` uses the model's ``verbose_name_plural``.
    filename: str | None = None
    #: Rows per database fetch; ``None`` means ``STREAMEXPORT_CHUNK_SIZE``.
    chunk_size: int | None = None
    #: Bytes per yielded chunk (approximate); ``None`` means ``STREAMEXPORT_BUFFER_SIZE``.
    buffer_size: int | None = None
    #: Database alias to read from; ``None`` means ``STREAMEXPORT_DATABASE``, then the routers.
    using: str | None = None
    #: The class of the response; it must take an iterator of ``bytes``.
    response_class = StreamingHttpResponse
    #: The class of the stream that reads and renders the rows.
    stream_class = ExportStream
    #: CSV through PostgreSQL COPY: ``True`` (fall back when impossible), ``"require"``,
    #: ``False``; ``None`` means ``STREAMEXPORT_COPY_MODE``.
    copy_mode: bool | str | None = None

    request: HttpRequest

    # --- what to export ---------------------------------------------------------

    def get_queryset(self) -> models.QuerySet:
        """Return the queryset to export.

        Default: ``queryset.all()``, else the model's default manager.  Override
        to scope rows per user (``.filter(owner=self.request.user)``); only
        what this returns can be exported.  Raises ``ImproperlyConfigured``
        when neither ``queryset`` nor ``model`` is set.
        """
        if self.queryset is not None:
            return self.queryset.all()
        if self.model is not None:
            return self.model._default_manager.all()
        raise ImproperlyConfigured(
            f"{type(self).__name__} is missing a queryset. Define {type(self).__name__}.model, "
            f"{type(self).__name__}.queryset, or override {type(self).__name__}.get_queryset()."
        )

    def get_export_fields(self) -> Sequence[ExportField]:
        """Return the fields to export, in column order. Default: ``export_fields``."""
        if not self.export_fields:
            raise ImproperlyConfigured(
                f"{type(self).__name__} is missing export_fields. Define "
                f"{type(self).__name__}.export_fields or override get_export_fields()."
            )
        return self.export_fields

    def get_export_labels(self) -> Mapping[str, str]:
        """Return header labels by field name. Default: ``export_labels`` or none."""
        return self.export_labels or {}

    def get_columns(self, queryset: models.QuerySet) -> list[ResolvedColumn]:
        """Resolve the export fields against ``queryset``.

        Raises ``ImproperlyConfigured`` for a field the model cannot export.
        """
        return resolve_columns(queryset, self.get_export_fields(), self.get_export_labels())

    # --- how to write it --------------------------------------------------------

    def get_format_classes(self) -> Sequence[type[ExportFormat]]:
        """Return the format classes offered. Default: ``format_classes`` or the setting."""
        if self.format_classes is not None:
            return self.format_classes
        return default_format_classes()

    def get_format_name(self) -> str | None:
        """Return the requested format name, or ``None`` for the default format."""
        return self.request.GET.get(self.format_query_param) or None

    def get_format_class(self) -> type[ExportFormat]:
        """Return the format class the request selects.

        Raises :class:`~django_streamexport.exceptions.UnknownFormat` (400)
        when the request names a format this view does not offer.
        """
        by_name = format_classes_by_name(self.get_format_classes())
        if not by_name:
            raise ImproperlyConfigured(f"{type(self).__name__} offers no export formats.")
        name = self.get_format_name()
        if name is None:
            return next(iter(by_name.values()))
        try:
            return by_name[name]
        except KeyError:
            offered = ", ".join(sorted(by_name))
            raise UnknownFormat(
                f"Unknown export format {name[:40]!r}. Choose one of: {offered}."
            ) from None

    def get_format_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for the format class (``delimiter``, ``bom``...)."""
        return {}

    def get_format(self, columns: Sequence[ResolvedColumn]) -> ExportFormat:
        """Return the format instance that renders ``columns``."""
        return self.get_format_class()(columns, **self.get_format_kwargs())

    def get_filename(self) -> str:
        """Return the download name without extension.

        Default: ``filename``, else the exported model's ``verbose_name_plural``.
        The result is cleaned (no path separators or control characters) and
        the format's extension is appended.
        """
        if self.filename:
            return str(self.filename)
        model = self.model or getattr(self.queryset, "model", None)
        return str(model._meta.verbose_name_plural) if model is not None else "export"

    def get_chunk_size(self) -> int:
        """Return the rows fetched per database round trip."""
        return self.chunk_size or conf.CHUNK_SIZE

    def get_buffer_size(self) -> int:
        """Return the approximate size of each yielded chunk, in bytes."""
        return self.buffer_size or conf.BUFFER_SIZE

    def get_using(self) -> str | None:
        """Return the database alias to read from; ``None`` lets the routers decide."""
        return self.using or conf.DATABASE

    def get_copy_mode(self) -> bool | str:
        """Return whether CSV bodies come from PostgreSQL ``COPY``.

        Default: ``copy_mode``, else ``STREAMEXPORT_COPY_MODE``.  ``True`` uses
        COPY where it gives the same file and falls back otherwise;
        ``"require"`` raises ``ImproperlyConfigured`` when it cannot
        (:mod:`django_streamexport.pgcopy`).
        """
        return conf.COPY_MODE if self.copy_mode is None else self.copy_mode

    def get_stream_kwargs(self) -> dict[str, Any]:
        """Return extra keyword arguments for the stream class (``copy_mode`` for a COPY stream)."""
        from django_streamexport.pgcopy import CopyExportStream

        if issubclass(self.get_stream_class(), CopyExportStream):
            return {"copy_mode": self.get_copy_mode()}
        return {}

    def get_stream_class(self) -> type[ExportStream]:
        """Return the stream class: ``CopyExportStream`` when COPY mode is on, else ``stream_class``."""
        if self.get_copy_mode() and self.stream_class is ExportStream:
            from django_streamexport.pgcopy import CopyExportStream

            return CopyExportStream
        return self.stream_class

    # --- the response -----------------------------------------------------------

    def get_export_stream(self) -> ExportStream:
        """Return the stream of the export this request asks for.

        Builds nothing lazily that could fail as a request error later:
        format and fields are resolved here, before the response starts.
        """
        queryset = self.get_queryset()
        columns = self.get_columns(queryset)
        export_format = self.get_format(columns)
        return self.get_stream_class()(
            queryset,
            columns,
            export_format,
            chunk_size=self.get_chunk_size(),
            buffer_size=self.get_buffer_size(),
            using=self.get_using(),
            **self.get_stream_kwargs(),
        )

    def render_to_export_response(self, *, include_body: bool = True) -> HttpResponse:
        """Return the streaming response, or a 4xx response for a bad request.

        With ``include_body=False`` (``HEAD``) the response has the same headers
        and no body, and the export query never runs.
        """
        try:
            stream = self.get_export_stream()
        except ExportRequestError as exc:
            return self.export_request_error(exc)
        return export_response(
            stream,
            self.get_filename(),
            include_body=include_body,
            response_class=self.response_class,
        )

    def export_request_error(self, exc: ExportRequestError) -> HttpResponse:
        """Return the plain-text 4xx response for a request that cannot be exported."""
        return HttpResponse(
            f"{exc}\n", status=exc.status_code, content_type="text/plain; charset=utf-8"
        )


class BaseStreamingExportView(StreamingExportMixin, View):
    """Stream the export on ``GET``; answer ``HEAD`` with headers only."""

    http_method_names = ["get", "head", "options"]

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return self.render_to_export_response()

    def head(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        # View.setup() aliases head to get; a streamed HEAD would run the whole
        # query for nothing (gunicorn iterates and discards the body).
        return self.render_to_export_response(include_body=False)


class StreamingExportView(BaseStreamingExportView):
    """Stream a queryset as CSV or NDJSON; subclass and set ``model`` and ``export_fields``."""

