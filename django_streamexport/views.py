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
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.generic import View

from django_streamexport.columns import ExportField, ResolvedColumn, resolve_columns
from django_streamexport.exceptions import ExportRequestError, FiltersRefused
from django_streamexport.formats import default_format_classes, select_format_class
from django_streamexport.formats.base import ExportFormat
from django_streamexport.limits import Slot
from django_streamexport.plan import ExportPlan, build_plan
from django_streamexport.responses import (
    admit_export,
    admitted_export_response,
    ensure_database,
    export_error_response,
    user_admission_key,
)
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
    #: The download name without extension; ``None`` uses the exported model's
    #: ``verbose_name_plural`` (of ``get_queryset()``'s model).
    filename: str | None = None
    #: Rows per database fetch; ``None`` means ``STREAMEXPORT_CHUNK_SIZE``.
    chunk_size: int | None = None
    #: Bytes per yielded chunk (approximate); ``None`` means ``STREAMEXPORT_BUFFER_SIZE``.
    buffer_size: int | None = None
    #: Database alias to read from; ``None`` means ``STREAMEXPORT_DATABASE``, then the routers.
    using: str | None = None
    #: Most rows an export may send; ``None`` means ``STREAMEXPORT_MAX_ROWS``, 0 no limit.
    max_rows: int | None = None
    #: Seconds per database statement; ``None`` means ``STREAMEXPORT_STATEMENT_TIMEOUT``.
    statement_timeout: float | None = None
    #: Seconds the transaction may wait on the client; ``None`` means the setting.
    idle_in_transaction_timeout: float | None = None
    #: The class of the response; it must take an iterator of ``bytes``.
    response_class = StreamingHttpResponse
    #: The class of the stream (the export's lifecycle); every reader works with any subclass.
    stream_class = ExportStream
    #: How rows are read: ``"cursor"`` (one server-side cursor in a transaction) or
    #: ``"keyset"`` (short page queries by ``keyset_key``; django_streamexport.readers.keyset).
    export_mode = "cursor"
    #: The unique, non-null field keyset pages are ordered by.
    keyset_key = "pk"
    #: CSV through PostgreSQL COPY: ``True`` (fall back when impossible), ``"require"``,
    #: ``False``; ``None`` means ``STREAMEXPORT_COPY_MODE``.
    copy_mode: bool | str | None = None
    #: Let PostgreSQL spell CSV cells (django_streamexport.postgresql.text); ``None`` means
    #: ``STREAMEXPORT_DATABASE_FORMATTING`` (on).
    database_formatting: bool | None = None
    #: Send the next ``FETCH`` while a batch is rendered (PostgreSQL, psycopg 3); ``None``: on.
    prefetch: bool | None = None

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
        classes = self.get_format_classes()
        if not classes:
            raise ImproperlyConfigured(f"{type(self).__name__} offers no export formats.")
        return select_format_class(classes, self.get_format_name())

    def get_format_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments for the format class (``delimiter``, ``bom``...)."""
        return {}

    def get_format(self, columns: Sequence[ResolvedColumn]) -> ExportFormat:
        """Return the format instance that renders ``columns``."""
        return self.get_format_class()(columns, **self.get_format_kwargs())

    def get_filename(self) -> str | None:
        """Return the download name without extension; ``None`` names it after the model.

        Default: ``filename``.  ``None`` gives the ``verbose_name_plural`` of the model
        ``get_queryset()`` returns.  The plan cleans the name (no path separators or
        control characters) and appends the format's extension.
        """
        return str(self.filename) if self.filename else None

    def get_chunk_size(self) -> int | None:
        """Return rows per database fetch. Default: ``chunk_size`` (``None``: the setting)."""
        return self.chunk_size

    def get_buffer_size(self) -> int | None:
        """Return bytes per yielded chunk. Default: ``buffer_size`` (``None``: the setting)."""
        return self.buffer_size

    def get_using(self) -> str | None:
        """Return the database alias (``None``: ``STREAMEXPORT_DATABASE``, then the routers)."""
        return self.using

    def get_max_rows(self) -> int | None:
        """Return the most rows one export may send (``None``: the setting; 0: no limit)."""
        return self.max_rows

    def get_statement_timeout(self) -> float | None:
        """Return seconds per database statement (``None``: the setting; 0: the server's)."""
        return self.statement_timeout

    def get_idle_in_transaction_timeout(self) -> float | None:
        """Return seconds the export transaction may wait on the client (``None``: the setting)."""
        return self.idle_in_transaction_timeout

    # --- admission --------------------------------------------------------------

    def get_admission_key(self) -> Any:
        """Return the key per-user export limits count under, or ``None`` for no per-user count.

        Default: the authenticated user's primary key; anonymous requests are
        counted only against the process-wide limit.
        """
        return user_admission_key(self.request)

    def admit_export(self) -> Slot:
        """Take a place among the exports running in this process.

        Raises :class:`~django_streamexport.exceptions.TooManyExports` (429)
        past ``STREAMEXPORT_MAX_CONCURRENT_EXPORTS`` or
        ``STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER``.
        """
        return admit_export(self.get_admission_key())

    def check_database(self, stream: ExportStream) -> None:
        """Make sure the export's database answers before the 200 goes out.

        Raises :class:`~django_streamexport.exceptions.DatabaseUnavailable`
        (503) when it cannot be reached.
        """
        ensure_database(stream)

    def get_copy_mode(self) -> bool | str | None:
        """Return whether CSV bodies come from PostgreSQL ``COPY``.

        Default: ``copy_mode`` (``None``: ``STREAMEXPORT_COPY_MODE``).  ``True`` uses
        COPY where it gives the same file and falls back otherwise; ``"require"``
        raises ``ImproperlyConfigured`` when it cannot
        (:mod:`django_streamexport.postgresql.copy`).
        """
        return self.copy_mode

    def get_export_mode(self) -> str:
        """Return ``"cursor"`` or ``"keyset"``. Default: ``export_mode``."""
        return self.export_mode

    # --- the plan and the stream ------------------------------------------------

    def get_export_plan_kwargs(self) -> dict[str, Any]:
        """Return :func:`~django_streamexport.plan.build_plan`'s options for this request.

        Default: every option from its hook or attribute (database, mode and key, COPY
        mode, database formatting, prefetching, sizes, limits, timeouts, filename) and
        the requesting ``user`` (for the signals).  Override to pass any other option
        without a new hook::

            def get_export_plan_kwargs(self):
                return {**super().get_export_plan_kwargs(), "max_rows": 50_000}
        """
        return {
            "using": self.get_using(),
            "mode": self.get_export_mode(),
            "keyset_key": self.keyset_key,
            "copy_mode": self.get_copy_mode(),
            "database_formatting": self.database_formatting,
            "prefetch": self.prefetch,
            "chunk_size": self.get_chunk_size(),
            "buffer_size": self.get_buffer_size(),
            "max_rows": self.get_max_rows(),
            "statement_timeout": self.get_statement_timeout(),
            "idle_in_transaction_timeout": self.get_idle_in_transaction_timeout(),
            "user": getattr(self.request, "user", None),
            "filename": self.get_filename(),
        }

    def get_export_plan(self) -> ExportPlan:
        """Return the validated plan of the export this request asks for.

        Format and fields are resolved here, before the response starts.  Raises
        :class:`~django_streamexport.exceptions.ExportRequestError` subclasses (4xx)
        for what the request got wrong, ``ImproperlyConfigured`` for what the view did.
        """
        queryset = self.get_queryset()
        columns = self.get_columns(queryset)
        return build_plan(
            queryset,
            columns=columns,
            export_format=self.get_format(columns),
            **self.get_export_plan_kwargs(),
        )

    def get_stream_class(self) -> type[ExportStream]:
        """Return the class of the export's stream. Default: ``stream_class``."""
        return self.stream_class

    def get_export_stream(self) -> ExportStream:
        """Return the stream of :meth:`get_export_plan`'s plan (its reader chosen)."""
        return self.get_stream_class()(self.get_export_plan())

    def render_to_export_response(self, *, include_body: bool = True) -> HttpResponseBase:
        """Return the streaming response, or a 4xx response for a bad request.

        With ``include_body=False`` (``HEAD``) the response has the same headers
        and no body, and the export query never runs.

        Before the response starts, in order: the request is validated (400; the
        query is compiled), the export is admitted (429, :meth:`admit_export`), the
        database is checked (503, :meth:`check_database`) and the query is checked
        (:func:`~django_streamexport.responses.check_query`).  Filters the query
        compiler, the driver or the database refuses are a 400 naming the query
        parameter when it can be told
        (:class:`~django_streamexport.exceptions.FiltersRefused`).  The admission slot is held
        until the response is closed.
        """
        try:
            stream = self.get_export_stream()
            return admitted_export_response(
                stream,
                self.admit_export(),
                check_database=self.check_database,
                include_body=include_body,
                response_class=self.response_class,
                request=self.request,
            )
        except FiltersRefused as exc:
            return self.export_request_error(exc.naming(self.request.GET))
        except ExportRequestError as exc:
            return self.export_request_error(exc)

    def export_request_error(self, exc: ExportRequestError) -> HttpResponse:
        """Return the plain-text 4xx/5xx response for a request that cannot be exported.

        Refusals (429, 503) carry ``Retry-After`` in seconds.
        """
        return export_error_response(exc)


class BaseStreamingExportView(StreamingExportMixin, View):
    """Stream the export on ``GET``; answer ``HEAD`` with headers only."""

    http_method_names = ("get", "head", "options")

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        return self.render_to_export_response()

    def head(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        # View.setup() aliases head to get; a streamed HEAD would run the whole
        # query for nothing (gunicorn iterates and discards the body).
        return self.render_to_export_response(include_body=False)


class StreamingExportView(BaseStreamingExportView):
    """Stream a queryset as CSV or NDJSON; subclass and set ``model`` and ``export_fields``."""
