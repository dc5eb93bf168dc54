"""Export from the Django admin: actions, a changelist button and an export page.

Add :class:`ExportAdminMixin` to a ``ModelAdmin`` (or subclass
:class:`ExportModelAdmin`)::

    @admin.register(Flight)
    class FlightAdmin(ExportAdminMixin, admin.ModelAdmin):
        list_display = ["time_hour", "carrier", "flight_number", "origin", "dest"]
        export_fields = ["id", "time_hour", "carrier__name", "origin", "dest", "dep_delay"]

and users with the export permission get:

* the actions "Export selected <verbose_name_plural> as CSV" / "as NDJSON" / "as
  Excel" (:func:`export_as_csv`, :func:`export_as_ndjson`, :func:`export_as_xlsx`), which
  stream the selected rows, or with "Select all N" (``select_across``) the whole filtered
  changelist, without listing their keys;
* an "Export" button on the changelist leading to the export page
  (``<changelist>/export/?_changelist_filters=<the changelist's query>``),
  where they pick a format and columns and download exactly what the
  changelist shows: list filters, search, date hierarchy and ordering
  applied, no pagination and no ``COUNT``.

Everything goes through the same pipeline as the views: one
:func:`~django_streamexport.plan.build_plan`, the same
:class:`~django_streamexport.streaming.ExportStream` (so COPY mode, keyset mode and
every guard apply) and :func:`~django_streamexport.responses.admitted_export_response`
(admission limits, the database check).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import django
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.views.main import ERROR_FLAG, PAGE_VAR, ChangeList
from django.contrib.auth import get_permission_codename
from django.core import checks
from django.core.exceptions import (
    FieldDoesNotExist,
    ImproperlyConfigured,
    PermissionDenied,
    ValidationError,
)
from django.db import models
from django.http import HttpRequest, HttpResponseBase, HttpResponseNotAllowed, QueryDict
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils.encoding import force_str
from django.utils.functional import lazy
from django.utils.http import urlencode
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from django_streamexport.columns import (
    Column,
    ExportField,
    ResolvedColumn,
    _walk_lookup,
    default_label,
    resolve_columns,
)
from django_streamexport.conf import conf
from django_streamexport.exceptions import (
    ExportRefused,
    ExportRequestError,
    FiltersRefused,
    UnknownField,
)
from django_streamexport.formats import (
    check_format_options,
    default_format_classes,
    format_classes_by_name,
    make_format,
    select_format_class,
)
from django_streamexport.formats.base import ExportFormat
from django_streamexport.plan import ExportPlan, build_plan
from django_streamexport.responses import (
    admit_export,
    admitted_export_response,
    check_query,
    export_error_response,
    user_admission_key,
)
from django_streamexport.streaming import ExportStream

if TYPE_CHECKING:
    from django.utils.functional import _StrPromise as StrPromise

__all__ = [
    "ExportAdminMixin",
    "ExportModelAdmin",
    "export_action",
    "export_as_csv",
    "export_as_ndjson",
    "export_as_xlsx",
]

#: The admin's name for the changelist query string carried to another page
#: (``django.contrib.admin.templatetags.admin_urls.add_preserved_filters``).
CHANGELIST_FILTERS_VAR = "_changelist_filters"
#: Query parameters of the export page's download.
FORMAT_VAR = "format"
FIELDS_VAR = "fields"
#: The export page's "Run in the background" (a GET shows the confirmation; a POST queues).
BACKGROUND_VAR = "_background"

PERMISSION_MODES = ("view", "export")

#: Django 6.1 writes the admin's breadcrumbs as ``<ol class="breadcrumbs">`` of ``<li>``
#: and styles only that; 5.2 and 6.0 write (and style) ``<div class="breadcrumbs">``.
#: The export page writes what the running Django's own pages write.
BREADCRUMBS_LIST = django.VERSION >= (6, 1)


# --- actions ----------------------------------------------------------------------------


def export_action(
    format_name: str, description: str | StrPromise | None = None
) -> Callable[..., HttpResponseBase]:
    """Return an admin action that streams the selected rows in the format ``format_name``.

    Use it for formats of your own (``actions = [export_action("xlsx")]``); the
    built-in :func:`export_as_csv` and :func:`export_as_ndjson` are made by it.
    The action needs ``has_export_permission()`` on the ``ModelAdmin``
    (:class:`ExportAdminMixin` has it; Django's check admin.E129 asks for it),
    exports the columns of ``get_export_fields(request)`` in their order, and
    returns the streaming response itself.  ``queryset`` is what Django passes:
    the changelist's filtered queryset, narrowed to the checked rows unless
    "select all" (``select_across``) was used; it is never evaluated here.
    """

    @admin.action(
        permissions=["export"],
        # Django fills in verbose_name_plural (ModelAdmin.get_action_choices()).
        description=description or _default_action_description(format_name),
    )
    def export_selected(
        modeladmin: ExportAdminMixin, request: HttpRequest, queryset: models.QuerySet
    ) -> HttpResponseBase:
        if not modeladmin.has_export_permission(request):
            raise PermissionDenied
        try:
            return modeladmin.export_queryset_response(request, queryset, format_name)
        except FiltersRefused as exc:
            # The changelist's filters are the query string of the action's URL.
            return export_error_response(exc.naming(request.GET))
        except ExportRequestError as exc:
            return export_error_response(exc)

    export_selected.__name__ = f"export_as_{format_name}"
    export_selected.__qualname__ = export_selected.__name__
    return export_selected


def _action_description(format_name: str) -> str:
    # The placeholder is put back for Django to fill (ModelAdmin.get_action_choices()).
    return _("Export selected %(verbose_name_plural)s as %(format)s") % {
        "verbose_name_plural": "%(verbose_name_plural)s",
        "format": format_name.upper(),
    }


#: The default action description, translated when Django lists the actions.
_default_action_description = lazy(_action_description, str)


#: "Export selected <verbose_name_plural> as CSV".
export_as_csv = export_action("csv")
#: "Export selected <verbose_name_plural> as NDJSON".
export_as_ndjson = export_action("ndjson")
#: "Export selected <verbose_name_plural> as Excel": a streamed ``.xlsx`` workbook.
export_as_xlsx = export_action(
    "xlsx", gettext_lazy("Export selected %(verbose_name_plural)s as Excel")
)


def _action_name(action: Any) -> str:
    """Return the name of what ``ModelAdmin.get_action()`` returned.

    Django 6.1 returns an ``Action`` (whose tuple unpacking and indexing are deprecated),
    earlier versions a ``(func, name, description)`` tuple; Django's own
    ``response_action()`` tells them apart the same way.
    """
    return action[1] if isinstance(action, tuple) else action.name


# --- a changelist that does not count ---------------------------------------------------


def _skip_results(self: ChangeList, request: HttpRequest) -> None:
    # ChangeList.get_results() runs the paginator's COUNT(*) (twice with
    # show_full_result_count) and fetches a page; an export needs neither.
    self.result_count = None  # type: ignore[assignment]
    self.full_result_count = None
    self.result_list = self.queryset.none()
    self.can_show_all = False
    self.multi_page = False
    self.paginator = None
    self.show_admin_actions = False


@cache
def uncounted_changelist(changelist_class: type[ChangeList]) -> type[ChangeList]:
    """Return a subclass of ``changelist_class`` that neither counts nor paginates."""
    return type(
        f"Uncounted{changelist_class.__name__}", (changelist_class,), {"get_results": _skip_results}
    )


# --- the mixin ----------------------------------------------------------------------------


class ExportAdminMixin:
    """Add streaming exports to a ``ModelAdmin``: actions, a changelist button, a page.

    Knobs are class attributes with ``get_*()`` hooks, as in the views.  Only
    the fields of :meth:`get_export_fields` can ever be exported, whatever
    the request asks for.
    """

    #: Lookups or ``Column`` objects users may export; ``None`` derives them from ``list_display``.
    export_fields: Sequence[ExportField] | None = None
    #: Header labels by field name, overriding the ``verbose_name`` defaults.
    export_labels: dict[str, str] | None = None
    #: Format classes offered on the export page; ``None`` means ``STREAMEXPORT_FORMATS``.
    export_format_classes: Sequence[type[ExportFormat]] | None = None
    #: Options of each format, by format name: ``{"csv": {"delimiter": ";", "bom": True}}``.
    export_format_options: Mapping[str, Mapping[str, Any]] | None = None
    #: The actions added for users with the export permission.
    export_actions: Sequence[Callable[..., Any]] = (export_as_csv, export_as_ndjson, export_as_xlsx)
    #: The export page's template.
    export_template: str = "admin/django_streamexport/export.html"
    #: Shows the "Export" button; extend it if you set your own ``change_list_template``.
    change_list_template = "admin/django_streamexport/change_list.html"
    #: How rows are read: ``"cursor"`` or ``"keyset"`` (short pages by ``export_keyset_key``,
    #: for PgBouncer in transaction pooling; the export is then ordered by that key).
    export_mode: str = "cursor"
    #: The unique, non-null field keyset pages are ordered by.
    export_keyset_key: str = "pk"
    #: The class of the export's stream.
    export_stream_class: type[ExportStream] = ExportStream
    #: Offer "Run in the background" on the export page when ``django_streamexport.jobs``
    #: is installed (the job's file lands in ``STREAMEXPORT_JOBS_STORAGE``).
    export_background: bool = True
    #: The zone datetimes are written in (``"current"``: the one the changelist shows them
    #: in); ``None`` means ``STREAMEXPORT_TIME_ZONE``.
    export_time_zone: Any = None

    # These come from ModelAdmin.
    model: type[models.Model]
    opts: Any
    admin_site: admin.AdminSite

    # --- what may be exported -------------------------------------------------------------

    def get_export_fields(self, request: HttpRequest) -> Sequence[ExportField]:
        """Return the fields users may export, in default column order.

        Default: ``export_fields``; else the entries of ``list_display`` that
        are model fields or ``__`` lookups through forward relations
        (``"carrier__name"``), each written as the changelist shows it where one
        query can (:meth:`list_display_export_field`), skipping ``__str__``,
        callables and ``ModelAdmin`` methods (computed in Python).  Raises
        ``ImproperlyConfigured`` when that leaves nothing.
        """
        if self.export_fields is not None:
            return self.export_fields
        fields: list[ExportField] = []
        seen: set[str] = set()
        for name in self.get_list_display(request):  # type: ignore[attr-defined]
            if not isinstance(name, str) or name in seen:
                continue
            try:
                path, _field = _walk_lookup(self.model, name)
            except (FieldDoesNotExist, ValueError):
                continue
            seen.add(name)
            fields.append(self.list_display_export_field(name, path))
        if not fields:
            raise ImproperlyConfigured(
                f"{type(self).__name__} has no model fields in list_display to export. Define "
                f"{type(self).__name__}.export_fields or override get_export_fields()."
            )
        return fields

    def list_display_export_field(self, name: str, path: Sequence[Any]) -> ExportField:
        """Return the export field of the ``list_display`` entry ``name`` (fields ``path``).

        What the changelist shows, where the export query can give it: a field with
        choices exports its labels (``Column(name, choices_display=True)``: "Published",
        not ``"p"``).  A foreign key or one-to-one field exports the related object's
        key, labelled with it (``"Author (ID)"``): the changelist shows the object's
        ``__str__()``, which is computed in Python; list the related field to export
        (``"author__name"``) in ``export_fields`` instead.  Other fields are exported as
        they are (``name``).
        """
        model_field = path[-1]
        if getattr(model_field, "flatchoices", None):
            return Column(name, choices_display=True)
        target = getattr(model_field, "target_field", None)
        if model_field.is_relation and target is not None:
            key = capfirst(force_str(target.verbose_name))
            return Column(name, label=f"{default_label(path)} ({key})")
        return name

    def get_export_labels(self, request: HttpRequest) -> dict[str, str]:
        """Return header labels by field name. Default: ``export_labels`` or none."""
        return dict(self.export_labels or {})

    def get_export_format_classes(self, request: HttpRequest) -> Sequence[type[ExportFormat]]:
        """Return the format classes offered. Default: ``export_format_classes`` or the setting."""
        if self.export_format_classes is not None:
            return self.export_format_classes
        return default_format_classes()

    def get_export_format_options(self, request: HttpRequest) -> Mapping[str, Mapping[str, Any]]:
        """Return the options of each format, by format name. Default: ``export_format_options``.

        Each format class is built with the options under its ``format`` name (none without
        an entry); a name not offered, or an option its class does not take, raises
        ``ImproperlyConfigured`` on any export.
        """
        return self.export_format_options or {}

    def get_export_filename(self, request: HttpRequest) -> str:
        """Return the download name without extension. Default: ``verbose_name_plural``."""
        return str(self.opts.verbose_name_plural)

    def get_export_plan_kwargs(self, request: HttpRequest) -> dict[str, Any]:
        """Return :func:`~django_streamexport.plan.build_plan`'s options for ``request``.

        Default: the requesting ``user`` (for the signals), the filename, ``export_mode``,
        ``export_keyset_key`` and ``export_time_zone``; every other option is its
        ``STREAMEXPORT_*`` setting
        (COPY mode, database formatting, sizes, limits, timeouts).  Override to pass
        any option::

            def get_export_plan_kwargs(self, request):
                return {**super().get_export_plan_kwargs(request), "max_rows": 100_000}
        """
        return {
            "user": getattr(request, "user", None),
            "filename": self.get_export_filename(request),
            "mode": self.export_mode,
            "keyset_key": self.export_keyset_key,
            "time_zone": self.export_time_zone,
        }

    # --- who may export ---------------------------------------------------------------------

    def has_export_permission(self, request: HttpRequest) -> bool:
        """Return whether ``request.user`` may export this model's rows.

        With ``STREAMEXPORT_ADMIN_EXPORT_PERMISSION = "view"`` (the default):
        the model's view (or change) permission, which is what seeing the
        changelist takes.  With ``"export"``: that and the dedicated
        ``<app_label>.export_<model_name>`` permission, which the project
        declares in the model's ``Meta.permissions`` (Django creates no such
        permission by itself; check ``django_streamexport.W101``).
        Superusers have every permission.
        """
        if not self.has_view_or_change_permission(request):  # type: ignore[attr-defined]
            return False
        if conf.ADMIN_EXPORT_PERMISSION != "view":  # "export"; anything else fails E101
            codename = get_permission_codename("export", self.opts)
            return request.user.has_perm(f"{self.opts.app_label}.{codename}")
        return True

    # --- actions ------------------------------------------------------------------------------

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        """Add :attr:`export_actions` to the actions, for users with the export permission.

        ``action_location`` is Django 6.1's ``ActionLocation`` (the changelist or the
        change form); Django 6.1 passes it to an override that names it and deprecates
        one that does not.  Earlier versions never pass it (``None``).  The export actions
        are changelist actions, so on the change form they are left out (Django's
        ``get_action()`` returns ``None`` for an action of another location).
        """
        location = {} if action_location is None else {"action_location": action_location}
        actions = super().get_actions(request, **location)  # type: ignore[misc]
        if self.actions is None or IS_POPUP_VAR in request.GET:  # type: ignore[attr-defined]
            return actions
        if not self.has_export_permission(request):
            return actions
        for action in self.export_actions:
            found = self.get_action(action, **location)  # type: ignore[attr-defined]
            if found is not None:
                actions.setdefault(_action_name(found), found)
        return actions

    def _valid_selection(self, values: Sequence[str]) -> bool:
        """Say whether every selected value is a key the model's primary key accepts."""
        pk = self.opts.pk
        try:
            for value in values:
                if value in pk.empty_values or "\x00" in value:
                    return False
                pk.get_prep_value(pk.to_python(value))
        except (ValidationError, ValueError, TypeError):
            return False
        return True

    def _export_action_names(self) -> set[str]:
        return {_action_name(self.get_action(action)) for action in self.export_actions}  # type: ignore[attr-defined]

    # --- the export itself --------------------------------------------------------------------

    def get_export_columns(
        self, request: HttpRequest, queryset: models.QuerySet, names: Sequence[str] | None = None
    ) -> list[ResolvedColumn]:
        """Resolve the chosen field ``names`` (default: all allowed) against ``queryset``.

        Raises :class:`~django_streamexport.exceptions.UnknownField` (400) for
        a name that is not among :meth:`get_export_fields`, or for a name
        chosen twice.
        """
        allowed = {self._field_name(field): field for field in self.get_export_fields(request)}
        if names is None:
            chosen = list(allowed.values())
        else:
            chosen = []
            for name in names:
                if name not in allowed:
                    raise UnknownField(_("Cannot export the field %(name)r.") % {"name": name[:60]})
                if allowed[name] in chosen:
                    raise UnknownField(_("The field %(name)r is chosen twice.") % {"name": name})
                chosen.append(allowed[name])
            if not chosen:
                raise UnknownField(_("Choose at least one column."))
        return resolve_columns(queryset, chosen, self.get_export_labels(request))

    @staticmethod
    def _field_name(field: ExportField) -> str:
        return field.name if isinstance(field, Column) else field

    def get_export_format_class(self, request: HttpRequest, name: str | None) -> type[ExportFormat]:
        """Return the offered format class called ``name`` (``None``: the first offered).

        Raises :class:`~django_streamexport.exceptions.UnknownFormat` (400).
        """
        return select_format_class(self.get_export_format_classes(request), name)

    def export_queryset_response(
        self,
        request: HttpRequest,
        queryset: models.QuerySet,
        format_name: str | None,
        field_names: Sequence[str] | None = None,
    ) -> HttpResponseBase:
        """Return the streaming response exporting ``queryset`` (never evaluated here).

        ``field_names`` picks and orders columns among the allowed fields
        (default: all of them).  Raises ``ExportRequestError`` subclasses: 400
        for a format or field the admin does not offer, 429 past the concurrent
        export limits, 503 when the database cannot be reached.  A ``HEAD``
        request gets the headers and never runs the query.
        """
        plan = self.get_export_plan(request, queryset, format_name, field_names)
        stream = self.export_stream_class(plan)
        # The same admission control (429) and database check (503) as the views.
        return admitted_export_response(
            stream,
            admit_export(user_admission_key(request)),
            include_body=request.method != "HEAD",
            request=request,
        )

    def get_export_plan(
        self,
        request: HttpRequest,
        queryset: models.QuerySet,
        format_name: str | None,
        field_names: Sequence[str] | None = None,
    ) -> ExportPlan:
        """Return the plan of exporting ``queryset`` in ``format_name`` with ``field_names``.

        A changelist that spans a to-many relation is ``DISTINCT``; the export keeps one
        row per object (the primary key is selected too; see
        :func:`~django_streamexport.columns.values_queryset`), with the annotations and
        ordering of ``get_queryset()``.  Raises ``ExportRequestError`` subclasses (400).
        """
        columns = self.get_export_columns(request, queryset, field_names)
        format_class = self.get_export_format_class(request, format_name)
        source = f"{type(self).__name__}.export_format_options"
        options = self.get_export_format_options(request)
        check_format_options(self.get_export_format_classes(request), options, source=source)
        return build_plan(
            queryset,
            columns=columns,
            export_format=make_format(
                format_class, columns, options.get(format_class.format), source=source
            ),
            **self.get_export_plan_kwargs(request),
        )

    # --- the changelist and the export page ------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        """Return the changelist class; for the export page, one that does not count."""
        changelist_class = super().get_changelist(request, **kwargs)  # type: ignore[misc]
        if getattr(request, "_streamexport_uncounted", False):
            return uncounted_changelist(changelist_class)
        return changelist_class

    def get_export_queryset(self, request: HttpRequest) -> models.QuerySet:
        """Return the rows the changelist shows for the query in ``_changelist_filters``.

        List filters, search, date hierarchy and ordering are applied by the
        ``ChangeList`` itself (``get_changelist_instance()``), without its
        pagination and ``COUNT`` queries.  Raises ``IncorrectLookupParameters``
        or ``SuspiciousOperation`` for a query the changelist refuses.
        """
        changelist_request = copy.copy(request)
        changelist_request.GET = QueryDict(request.GET.get(CHANGELIST_FILTERS_VAR, ""))
        changelist_request._streamexport_uncounted = True  # type: ignore[attr-defined]
        changelist = self.get_changelist_instance(changelist_request)  # type: ignore[attr-defined]
        return changelist.queryset

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> HttpResponseBase:
        """Add the export button's URL; refuse export actions without permission (403).

        An export action whose selected keys are not keys of the model (``x``, ``1.5``,
        an empty value) is a 400: Django's own action handling would filter by them and
        fail with a 500 (a ``ValueError`` from the key field).
        """
        if request.method == "POST" and (
            set(request.POST.getlist("action")) & self._export_action_names()
        ):
            if not self.has_export_permission(request):
                raise PermissionDenied
            if not self._valid_selection(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)):
                return export_error_response(
                    ExportRequestError(_("The selected rows are not valid."))
                )
        extra_context = dict(extra_context or {})
        if self.has_export_permission(request):
            query = request.GET.copy()
            for name in (PAGE_VAR, ERROR_FLAG):
                query.pop(name, None)
            url = reverse(
                f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_export"
            )
            if query:
                url += "?" + urlencode({CHANGELIST_FILTERS_VAR: query.urlencode()})
            extra_context["streamexport_url"] = url
        return super().changelist_view(request, extra_context)  # type: ignore[misc]

    def get_urls(self) -> list:
        """Add ``<changelist>/export/`` (name ``<app>_<model>_export``) before the model's URLs."""
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "export/",
                self.admin_site.admin_view(self.export_view),
                name="{}_{}_export".format(*info),
            ),
            *super().get_urls(),  # type: ignore[misc]
        ]

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """Show the export page; with ``format`` in the query, stream the download.

        The download is ``GET ?_changelist_filters=<changelist query>&format=<name>
        &fields=<name>&fields=<name>...``: ``fields`` in column order, each one of
        :meth:`get_export_fields`.  Answers 403 without the export permission,
        400 (the page again, with the error) for an unknown format or field, for
        filters the changelist refuses, and for filters the query compiler, the driver
        or the database refuses (naming the changelist's parameter when it can be told;
        :class:`~django_streamexport.exceptions.FiltersRefused`).
        """
        if not self.has_export_permission(request):
            raise PermissionDenied
        background = self.has_background_export(request)
        if request.method == "POST" and background and BACKGROUND_VAR in request.POST:
            return self.queue_background_export(request)
        if request.method not in ("GET", "HEAD"):
            # The page is a form that GETs the download; only queueing a job is a POST.
            return HttpResponseNotAllowed(
                ["GET", "HEAD", "POST"] if background else ["GET", "HEAD"]
            )
        from django.contrib.admin.options import IncorrectLookupParameters

        allowed = [self._field_name(field) for field in self.get_export_fields(request)]
        # No fields parameter: all allowed fields. The page's form always sends an empty
        # fields="" first, so a form with nothing checked is refused rather than exporting all.
        chosen = [name for name in request.GET.getlist(FIELDS_VAR) if name]
        field_names = chosen if FIELDS_VAR in request.GET else None
        error = None
        if FORMAT_VAR in request.GET:
            filters = QueryDict(request.GET.get(CHANGELIST_FILTERS_VAR, ""))
            try:
                queryset = self.get_export_queryset(request)
            except IncorrectLookupParameters:
                error = _("The changelist's filters are not valid.")
            except (ValueError, OverflowError) as exc:
                # Django's date hierarchy computes the end of the year 9999 (year 10000),
                # or the day after 9999-12-31, unguarded (ChangeList.get_filters()).
                dates = [name for name in self._date_hierarchy_parameters() if name in filters]
                if not dates:
                    raise
                refusal = FiltersRefused.from_error(exc)
                if len(dates) == 1:
                    refusal = FiltersRefused(refusal.reason, parameter=dates[0])
                error = str(refusal)
            else:
                try:
                    if background and BACKGROUND_VAR in request.GET:
                        # Validate as the download would, then ask to confirm (a POST queues).
                        plan = self.get_background_plan(
                            request, queryset, request.GET[FORMAT_VAR], field_names
                        )
                        return self.render_export_page(
                            request, allowed, chosen, None, confirm_background=plan
                        )
                    return self.export_queryset_response(
                        request, queryset, request.GET[FORMAT_VAR], field_names
                    )
                except ExportRefused as exc:
                    return export_error_response(exc)
                except FiltersRefused as exc:
                    error = str(exc.naming(filters))
                except ExportRequestError as exc:
                    error = str(exc)
        return self.render_export_page(request, allowed, chosen, error)

    def has_background_export(self, request: HttpRequest) -> bool:
        """Say whether the export page offers "Run in the background".

        Default: ``export_background`` and ``django_streamexport.jobs`` installed.
        """
        from django.apps import apps

        return self.export_background and apps.is_installed("django_streamexport.jobs")

    def queue_background_export(self, request: HttpRequest) -> HttpResponseBase:
        """Queue the export the form's ``POST`` data asks for as a job; redirect to the job.

        The form carries what the download would: ``_changelist_filters``, ``format``
        and ``fields``.  They are validated as a download's (the page again with the
        error, 400), and the job records them, never the rows' keys: the rows are the
        ones the changelist shows when the job runs.  A message links the job's page
        (the admin of ``ExportJob``).
        """
        from django.contrib import messages
        from django.contrib.admin.options import IncorrectLookupParameters
        from django.shortcuts import redirect
        from django.utils.html import format_html

        from django_streamexport.estimates import estimate_rows
        from django_streamexport.jobs.runner import queue_export_job
        from django_streamexport.jobs.sources import describe_admin

        form_request = copy.copy(request)
        form_request.GET = request.POST
        data = request.POST
        chosen = [name for name in data.getlist(FIELDS_VAR) if name]
        field_names = chosen if FIELDS_VAR in data else None
        allowed = [self._field_name(field) for field in self.get_export_fields(request)]
        filters = QueryDict(data.get(CHANGELIST_FILTERS_VAR, ""))
        try:
            queryset = self.get_export_queryset(form_request)
            plan = self.get_background_plan(
                form_request, queryset, data.get(FORMAT_VAR), field_names
            )
        except FiltersRefused as exc:
            return self.render_export_page(form_request, allowed, chosen, str(exc.naming(filters)))
        except ExportRequestError as exc:
            return self.render_export_page(form_request, allowed, chosen, str(exc))
        except IncorrectLookupParameters:
            error = _("The changelist's filters are not valid.")
            return self.render_export_page(form_request, allowed, chosen, error)
        job_page = self._job_page_url(request)
        job = queue_export_job(
            user=request.user,
            source=describe_admin(self, data.get(CHANGELIST_FILTERS_VAR, "")),
            format=plan.format.format,
            fields=field_names,
            filename=plan.filename,
            rows_estimate=estimate_rows(plan),
            request=request,
            page_url=job_page,
        )
        url = job_page(job.pk) if job_page else ""
        messages.success(
            request,
            format_html(
                _('The export of {} was queued; <a href="{}">follow it here</a>.'),
                plan.filename,
                url,
            )
            if url
            else _("The export of %(name)s was queued.") % {"name": plan.filename},
        )
        return redirect(url or request.get_full_path())

    def get_background_plan(
        self,
        request: HttpRequest,
        queryset: models.QuerySet,
        format_name: str | None,
        field_names: Sequence[str] | None,
    ) -> ExportPlan:
        """Return the plan a background export of ``queryset`` would run, checked now.

        As a download is checked before its first byte: the plan
        (:meth:`get_export_plan`), then the query, which the driver and the database must
        accept (:func:`~django_streamexport.responses.check_query`; nothing runs).
        Raises ``ExportRequestError`` subclasses (400), ``FiltersRefused`` among them.
        """
        plan = self.get_export_plan(request, queryset, format_name, field_names)
        stream = self.export_stream_class(plan)
        try:
            check_query(stream)
        finally:
            stream.close()
        return plan

    def _job_page_url(self, request: HttpRequest) -> Callable[[Any], str] | None:
        """Return ``job id -> the job's admin page`` (absolute), if ``ExportJob`` is registered."""
        for site_name in (self.admin_site.name, "admin"):
            try:
                reverse(f"{site_name}:streamexport_jobs_exportjob_changelist")
            except NoReverseMatch:
                continue

            def page(job_id: Any, site_name: str = site_name) -> str:
                url = reverse(f"{site_name}:streamexport_jobs_exportjob_change", args=[job_id])
                return request.build_absolute_uri(url)

            return page
        return None

    def _date_hierarchy_parameters(self) -> list[str]:
        field = self.date_hierarchy  # type: ignore[attr-defined]
        return [f"{field}__{part}" for part in ("year", "month", "day")] if field else []

    def render_export_page(
        self,
        request: HttpRequest,
        allowed: list[str],
        chosen: list[str],
        error: str | None,
        *,
        confirm_background: ExportPlan | None = None,
    ) -> TemplateResponse:
        """Render the export page: format choice and an ordered list of columns.

        With ``confirm_background`` (the plan of the chosen export), the page asks to
        confirm running it in the background: a ``POST`` form with the CSRF token.
        """
        queryset = self.model._default_manager.none()
        columns = {
            column.name: column
            for column in resolve_columns(
                queryset, self.get_export_fields(request), self.get_export_labels(request)
            )
        }
        # The chosen columns first, in their order, then the others; all checked by default.
        picked = [name for name in chosen if name in columns]
        checked = set(picked) if chosen else set(allowed)
        order = picked + [name for name in allowed if name not in picked]
        formats = list(format_classes_by_name(self.get_export_format_classes(request)))
        current_format = request.GET.get(FORMAT_VAR)
        filters = request.GET.get(CHANGELIST_FILTERS_VAR, "")
        changelist_url = reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_changelist"
        )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Export %(name)s") % {"name": self.opts.verbose_name_plural},
            "subtitle": None,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": True,
            "columns": [
                {"name": name, "label": columns[name].label, "checked": name in checked}
                for name in order
            ],
            "formats": [
                {"name": name, "checked": name == current_format or (not current_format and i == 0)}
                for i, name in enumerate(formats)
            ],
            "changelist_filters": filters,
            "changelist_url": changelist_url + (f"?{filters}" if filters else ""),
            "filtered": bool(QueryDict(filters)),
            "error": error,
            "breadcrumbs_list": BREADCRUMBS_LIST,
            "format_var": FORMAT_VAR,
            "fields_var": FIELDS_VAR,
            "changelist_filters_var": CHANGELIST_FILTERS_VAR,
            "background_var": BACKGROUND_VAR,
            "background": self.has_background_export(request),
            "confirm_background": confirm_background,
            "chosen_fields": picked if chosen else [],
            "fields_sent": FIELDS_VAR in request.GET,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(
            request, self.export_template, context, status=400 if error else 200
        )

    # --- checks ----------------------------------------------------------------------------

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        """Add the export check W101 to the ``ModelAdmin``'s."""
        errors = super().check(**kwargs)  # type: ignore[misc]
        # E101 (an invalid STREAMEXPORT_ADMIN_EXPORT_PERMISSION) is a settings check,
        # reported once (django_streamexport.checks).
        if conf.ADMIN_EXPORT_PERMISSION == "export":
            codename = get_permission_codename("export", self.opts)
            declared = {name for name, _label in self.opts.permissions}
            if codename not in declared:
                errors.append(
                    checks.Warning(
                        f"STREAMEXPORT_ADMIN_EXPORT_PERMISSION is 'export', but "
                        f"{self.opts.label} declares no {codename!r} permission, so only "
                        "superusers can export from its admin.",
                        hint=f'Add ("{codename}", "Can export {self.opts.verbose_name}") to '
                        f"{self.opts.object_name}.Meta.permissions and run makemigrations, or "
                        "silence this warning if a data migration creates the permission.",
                        obj=self,
                        id="django_streamexport.W101",
                    )
                )
        return errors


class ExportModelAdmin(ExportAdminMixin, admin.ModelAdmin):  # type: ignore[misc]  # stubs' signatures
    """A ``ModelAdmin`` with streaming exports (see :class:`ExportAdminMixin`)."""
