"""What builds a job's export: an export view or a ``ModelAdmin``, rebuilt when the job runs.

A job stores a *source* (which view or admin, and the query the user sent), never rows or
primary keys.  :func:`build_job_export` rebuilds the request the user made, with the job's
user, and asks the source for its plan exactly as the streamed export does, so the rows,
columns, format and options are the ones a download would have had at that moment, and
the user's permissions are checked again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.admin.sites import all_sites
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, QueryDict
from django.utils.http import urlencode
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from django_streamexport.plan import ExportPlan
from django_streamexport.streaming import ExportStream

__all__ = ["JobExport", "build_job_export", "describe_admin", "describe_view", "job_request"]

#: The admin export page's query parameter of the changelist's filters.
CHANGELIST_FILTERS_VAR = "_changelist_filters"


@dataclass(frozen=True)
class JobExport:
    """A job's export, rebuilt: its ``plan`` and the ``stream_class`` to stream it with."""

    plan: ExportPlan
    stream_class: type[ExportStream]

    def stream(self) -> ExportStream:
        return self.stream_class(self.plan)


def describe_view(view: Any) -> dict[str, Any]:
    """Return the :class:`~django_streamexport.jobs.models.ExportJob` fields naming ``view``.

    ``view`` is a set-up export view (``StreamingExportMixin``); its class must be
    importable by its dotted path and its URL keyword arguments JSON values.
    """
    cls = type(view)
    request = view.request
    return {
        "source_kind": "view",
        "source": f"{cls.__module__}.{cls.__qualname__}",
        "url_kwargs": dict(getattr(view, "kwargs", {}) or {}),
        "query_string": request.META.get("QUERY_STRING", "") or request.GET.urlencode(),
    }


def describe_admin(model_admin: Any, changelist_filters: str) -> dict[str, Any]:
    """Return the ``ExportJob`` fields naming ``model_admin`` and the changelist's filters."""
    opts = model_admin.opts
    return {
        "source_kind": "admin",
        "source": f"{model_admin.admin_site.name}:{opts.app_label}.{opts.model_name}",
        "url_kwargs": {},
        "query_string": changelist_filters,
    }


def describe_command(options: dict[str, Any]) -> dict[str, Any]:
    """Return the ``ExportJob`` fields naming a ``streamexport`` command's export."""
    kept = ("model", "view", "format", "fields", "filter", "database", "mode")
    return {
        "source_kind": "command",
        "source": options.get("view") or options.get("model") or "",
        "url_kwargs": {name: options.get(name) for name in kept},
        "query_string": "",
    }


def job_request(user: Any, query_string: str) -> HttpRequest:
    """Return a plain ``GET`` request by ``user`` with ``query_string``: what views read."""
    request = HttpRequest()
    request.method = "GET"
    request.GET = QueryDict(query_string)
    request.META["QUERY_STRING"] = query_string
    request.META["REQUEST_METHOD"] = "GET"
    request.user = user
    return request


def build_job_export(
    *,
    user: Any,
    source_kind: str,
    source: str,
    query_string: str,
    url_kwargs: dict[str, Any] | None = None,
    format: str | None = None,
    fields: Sequence[str] | None = None,
) -> JobExport:
    """Rebuild a job's export from its source, as ``user``.

    Raises ``PermissionDenied`` when the user may no longer export from the source,
    ``ExportRequestError`` subclasses for what the query asks wrongly (as a download
    would answer 400), ``ImproperlyConfigured`` for a source that no longer exists.
    """
    if source_kind == "view":
        return _view_export(user, source, query_string, url_kwargs or {})
    if source_kind == "admin":
        return _admin_export(user, source, query_string, format, fields)
    if source_kind == "command":
        return _command_export(url_kwargs or {})
    raise ValueError(f"Unknown export job source kind {source_kind!r}.")


def _view_export(
    user: Any, source: str, query_string: str, url_kwargs: dict[str, Any]
) -> JobExport:
    from django.core.exceptions import ImproperlyConfigured

    try:
        view_class = import_string(source)
    except ImportError as exc:
        raise ImproperlyConfigured(f"The export view {source!r} cannot be imported.") from exc
    view = view_class()
    view.setup(job_request(user, query_string), **url_kwargs)
    if not view.has_export_permission():
        raise PermissionDenied(_("You may no longer run this export."))
    return JobExport(view.get_export_plan(), view.get_stream_class())


def _admin_export(
    user: Any,
    source: str,
    changelist_filters: str,
    format: str | None,
    fields: Sequence[str] | None,
) -> JobExport:
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    site_name, _sep, label = source.partition(":")
    site = next((site for site in all_sites if site.name == site_name), None)
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError) as exc:
        raise ImproperlyConfigured(f"The exported model {label!r} does not exist.") from exc
    model_admin: Any = site._registry.get(model) if site is not None else None
    if site is None or model_admin is None:
        raise ImproperlyConfigured(f"No admin site {site_name!r} registers {label!r}.")
    request = job_request(user, urlencode({CHANGELIST_FILTERS_VAR: changelist_filters}))
    # What admin_view() and the export page check when the user asks.
    if not (site.has_permission(request) and model_admin.has_export_permission(request)):
        raise PermissionDenied(_("You may no longer export from this admin."))
    queryset = model_admin.get_export_queryset(request)
    plan = model_admin.get_export_plan(request, queryset, format, fields)
    return JobExport(plan, model_admin.export_stream_class)


def _command_export(options: dict[str, Any]) -> JobExport:
    # The operator who queued it chose the rows; the command's own builder rebuilds them.
    from django_streamexport.management.commands.streamexport import Command

    command = Command()
    plan = command.get_plan({"model": None, "view": None, "format": None, "fields": None,
                             "filter": [], "database": None, "mode": None, **options})  # fmt: skip
    return JobExport(plan, command.stream_class)
