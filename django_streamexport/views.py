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

import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    JsonResponse,
    StreamingHttpResponse,
)
from django.utils.translation import gettext as _
from django.views.generic import View

from django_streamexport.columns import ExportField, ResolvedColumn, resolve_columns
from django_streamexport.exceptions import ExportRequestError, FiltersRefused
from django_streamexport.formats import (
    check_format_options,
    default_format_classes,
    make_format,
    select_format_class,
)
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


def _takes_no_argument(method: Any) -> bool:
    """Say whether the bound ``method`` takes no argument (an override of an older hook)."""
    try:
        return not inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


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
    #: Options of each format, by format name: ``{"csv": {"delimiter": ";", "bom": True}}``.
    format_options: Mapping[str, Mapping[str, Any]] | None = None
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
    #: ``False`` (opt out); ``None`` means ``STREAMEXPORT_COPY_MODE`` (default ``True``).
    copy_mode: bool | str | None = None
    #: Let PostgreSQL spell CSV cells (django_streamexport.postgresql.text); ``None`` means
    #: ``STREAMEXPORT_DATABASE_FORMATTING`` (on).
    database_formatting: bool | None = None
    #: Send the next ``FETCH`` while a batch is rendered (PostgreSQL, psycopg 3); ``None``: on.
    prefetch: bool | None = None
    #: Run the export as a background job (``django_streamexport.jobs``) instead of
    #: streaming it: ``False``, ``True``, or ``"auto"`` (above ``STREAMEXPORT_BACKGROUND_ROWS``
    #: rows by the planner's estimate).  A queued job answers ``202 Accepted``.
    background: bool | str = False
    #: The zone datetimes are written in: ``"current"`` (Django's current time zone), a name
    #: (``"Europe/Berlin"``) or a ``tzinfo``; ``None`` means ``STREAMEXPORT_TIME_ZONE``.
    time_zone: Any = None

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

    def get_format_options(self) -> Mapping[str, Mapping[str, Any]]:
        """Return the options of each format, by format name. Default: ``format_options``."""
        return self.format_options or {}

    def get_format_kwargs(self, format_class: type[ExportFormat]) -> dict[str, Any]:
        """Return the keyword arguments ``format_class`` is built with for this request.

        Default: the options of ``format_class.format`` in :meth:`get_format_options`
        (none for a format without an entry).  Override to decide per request::

            def get_format_kwargs(self, format_class):
                if format_class.format == "csv":
                    return {"delimiter": ";", "bom": True}
                return super().get_format_kwargs(format_class)

        An override written for earlier versions, ``get_format_kwargs(self)`` without
        ``format_class``, is still called (with a ``DeprecationWarning``); its options must
        suit every offered format, or the export raises ``ImproperlyConfigured`` naming the
        format that does not take them.
        """
        return dict(self.get_format_options().get(format_class.format) or {})

    def get_format(self, columns: Sequence[ResolvedColumn]) -> ExportFormat:
        """Return the format instance that renders ``columns``.

        The class of :meth:`get_format_class`, built with :meth:`get_format_kwargs`.  Raises
        ``ImproperlyConfigured`` when :meth:`get_format_options` names a format not offered
        or gives a format an option it does not take (whichever format is requested).
        """
        format_class = self.get_format_class()
        name = type(self).__name__
        check_format_options(
            self.get_format_classes(), self.get_format_options(), source=f"{name}.format_options"
        )
        if _takes_no_argument(self.get_format_kwargs):
            warnings.warn(
                f"{name}.get_format_kwargs() takes no format_class: its options are given to "
                "every format. Define get_format_kwargs(self, format_class), or set "
                "format_options = {'csv': {...}} by format name.",
                DeprecationWarning,
                stacklevel=2,
            )
            kwargs = self.get_format_kwargs()  # type: ignore[call-arg]
        else:
            kwargs = self.get_format_kwargs(format_class)
        return make_format(format_class, columns, kwargs, source=f"{name}.get_format_kwargs()")

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

    def get_time_zone(self) -> Any:
        """Return the zone datetimes are written in. Default: ``time_zone`` (``None``: the setting).

        ``"current"`` is Django's current time zone when the plan is built, in the request
        (``timezone.activate()`` by a middleware); see :mod:`django_streamexport.timezones`.
        """
        return self.time_zone

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

        Default: ``copy_mode`` (``None``: ``STREAMEXPORT_COPY_MODE``, ``True`` unless
        set).  ``True`` uses COPY where it gives the same file and falls back to the cursor
        otherwise (the reason in ``stream.reader.reason``); ``False`` always reads through
        the cursor; ``"require"`` raises ``ImproperlyConfigured`` when COPY cannot be used
        (:mod:`django_streamexport.postgresql.copy`).  Override to decide per request.
        """
        return self.copy_mode

    def get_export_mode(self) -> str:
        """Return ``"cursor"`` or ``"keyset"``. Default: ``export_mode``."""
        return self.export_mode

    # --- the plan and the stream ------------------------------------------------

    def get_export_plan_kwargs(self) -> dict[str, Any]:
        """Return :func:`~django_streamexport.plan.build_plan`'s options for this request.

        Default: every option from its hook or attribute (database, mode and key, COPY
        mode, database formatting, prefetching, sizes, limits, timeouts, filename, time
        zone) and the requesting ``user`` (for the signals).  Override to pass any other
        option without a new hook::

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
            "time_zone": self.get_time_zone(),
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
            background = self.get_background() if include_body else False
            if background:
                plan = self.get_export_plan()
                if self.should_run_in_background(plan, background):
                    return self.queue_export_job(plan)
                stream = self.get_stream_class()(plan)
            else:
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

    # --- background exports (django_streamexport.jobs) ---------------------------------

    def get_background(self) -> bool | str:
        """Return ``False``, ``True`` or ``"auto"``. Default: ``background``."""
        return self.background

    def should_run_in_background(self, plan: ExportPlan, background: bool | str) -> bool:
        """Say whether this export runs as a job (``background`` is ``True`` or ``"auto"``).

        ``"auto"``: when the user is signed in and the planner's estimate
        (:func:`~django_streamexport.estimates.estimate_rows`, PostgreSQL) is above
        ``STREAMEXPORT_BACKGROUND_ROWS``; anonymous users and databases without an
        estimate stream.  ``True``: always (an anonymous user gets a 403: a job's file
        belongs to a user).
        """
        if background == "auto":
            from django_streamexport.estimates import estimate_rows
            from django_streamexport.jobs.conf import jobs_conf

            if not getattr(self.request.user, "is_authenticated", False):
                return False
            estimate = estimate_rows(plan)
            self._rows_estimate = estimate
            return estimate is not None and estimate > jobs_conf.BACKGROUND_ROWS
        return bool(background)

    def has_export_permission(self) -> bool:
        """Return whether the request's user may run this export (checked again as a job runs).

        Default: the tests of the access mixins the view uses, which ``dispatch()``
        applied to the request that queued the job: ``LoginRequiredMixin``,
        ``PermissionRequiredMixin.has_permission()`` and ``UserPassesTestMixin``'s
        test.  Override for checks made elsewhere (a decorator, ``get_queryset()``
        raising ``PermissionDenied`` is already covered: it runs again).
        """
        from django.contrib.auth.mixins import (
            LoginRequiredMixin,
            PermissionRequiredMixin,
            UserPassesTestMixin,
        )

        user = getattr(self.request, "user", None)
        if isinstance(self, LoginRequiredMixin) and not getattr(user, "is_authenticated", False):
            return False
        if isinstance(self, PermissionRequiredMixin) and not self.has_permission():
            return False
        return not (isinstance(self, UserPassesTestMixin) and not self.get_test_func()())

    def queue_export_job(self, plan: ExportPlan) -> HttpResponse:
        """Queue ``plan``'s export as a job; return ``202 Accepted`` with its status.

        The body is the job's status resource (JSON); ``Location`` is its URL
        (``django_streamexport.jobs.urls``, which the project includes).  Raises
        ``ImproperlyConfigured`` without the ``django_streamexport.jobs`` app or its
        URLs, ``PermissionDenied`` (403) for an anonymous user.
        """
        from django.apps import apps
        from django.core.exceptions import PermissionDenied

        if not apps.is_installed("django_streamexport.jobs"):
            raise ImproperlyConfigured(
                f"{type(self).__name__}.background needs 'django_streamexport.jobs' in "
                "INSTALLED_APPS."
            )
        from django_streamexport.estimates import estimate_rows
        from django_streamexport.jobs.runner import queue_export_job
        from django_streamexport.jobs.sources import describe_view
        from django_streamexport.jobs.views import job_resource

        user = getattr(self.request, "user", None)
        if not getattr(user, "is_authenticated", False):
            raise PermissionDenied(_("Sign in to run this export in the background."))
        estimate = getattr(self, "_rows_estimate", None)
        job = queue_export_job(
            user=user,
            source=describe_view(self),
            format=plan.format.format,
            filename=plan.filename,
            rows_estimate=estimate if estimate is not None else estimate_rows(plan),
            request=self.request,
        )
        response = JsonResponse(job_resource(self.request, job), status=202)
        response["Location"] = job.page_url
        response["Cache-Control"] = "no-store"
        return response

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
