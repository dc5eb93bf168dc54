"""The export plan: everything one export needs, resolved and validated in one place.

Every entry point (views, admin actions and the admin export page, the DRF mixin, the
``streamexport`` command) turns what it knows into keyword arguments of
:func:`build_plan` and hands the :class:`ExportPlan` on to
:class:`~django_streamexport.streaming.ExportStream`; none of them assembles a stream
itself.  Settings are read here, once per export: an option left ``None`` means its
``STREAMEXPORT_*`` setting.  A new knob is a new field of the plan and a new keyword of
the builder, so every entry point gets it (views and the admin pass extra keywords
through their ``get_export_plan_kwargs()`` hooks).

::

    plan = build_plan(Flight.objects.filter(origin="JFK"), fields=["id", "carrier__name"],
                      format="csv", user=request.user)
    stream = ExportStream(plan)        # bytes chunks of about plan.buffer_size bytes
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import connections, models

from django_streamexport.columns import ExportField, ResolvedColumn, resolve_columns
from django_streamexport.conf import conf
from django_streamexport.formats import default_format_classes, make_format, select_format_class
from django_streamexport.formats.base import ExportFormat
from django_streamexport.http import safe_filename
from django_streamexport.postgresql.guards import MAX_TIMEOUT_MS
from django_streamexport.timezones import resolve_time_zone

__all__ = [
    "COPY_MODES",
    "MODES",
    "ExportPlan",
    "build_plan",
    "server_side_cursors_disabled",
    "unique_key_field",
]

#: How rows are read: one server-side cursor in a transaction, or short keyset pages.
MODES = ("cursor", "keyset")
#: ``copy_mode`` values: off, on with a fall-back to the cursor, on or refuse.
COPY_MODES = (False, True, "require")


@dataclass(frozen=True)
class ExportPlan:
    """One export, validated: what to read, how to render it, and its limits.

    Built by :func:`build_plan`; read-only.  Sizes are in rows (``chunk_size``, rows
    per database fetch or keyset page) and bytes (``buffer_size``, the approximate size
    of each chunk the stream yields); ``time_slice`` is the longest the stream works
    without letting other requests run, in seconds; timeouts in seconds, ``None`` for the server's
    own; ``max_rows`` ``None`` for no limit.  ``filename`` is the cleaned download name
    with the format's extension (RFC 6266 ``Content-Disposition``).  ``user`` is the
    user the export is made for (``None`` from the command line), passed to the
    signals.  ``time_zone`` is the zone datetimes are written in (``None``: as the database
    returns them, UTC under ``USE_TZ``), already given to the format
    (:meth:`~django_streamexport.formats.base.ExportFormat.set_time_zone`).
    """

    queryset: models.QuerySet
    columns: tuple[ResolvedColumn, ...]
    format: ExportFormat
    using: str
    mode: str = "cursor"
    keyset_key: str = "pk"
    copy_mode: bool | str = True
    database_formatting: bool = True
    prefetch: bool = True
    chunk_size: int = 2000
    buffer_size: int = 64 * 1024
    time_slice: float = 0.002
    max_rows: int | None = None
    statement_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    user: Any = None
    filename: str = "export"
    time_zone: datetime.tzinfo | None = None
    export_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def model(self) -> type[models.Model]:
        """Return the exported model."""
        return self.queryset.model


def _setting(value: Any, default: Any) -> Any:
    return default if value is None else value


# The rules of option values, shared with the settings' system checks (checks.py).


def is_integer(value: Any) -> bool:
    """Say whether ``value`` is an ``int`` (``True`` and ``False`` are not, here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_count(value: Any) -> bool:
    """Say whether ``value`` is a limit in rows or exports: ``None`` or an integer >= 0."""
    return value is None or (is_integer(value) and value >= 0)


def is_timeout(value: Any) -> bool:
    """Say whether ``value`` is ``None`` or seconds from 0 to what PostgreSQL takes.

    PostgreSQL takes at most INT_MAX milliseconds (``pg_settings.max_val``); NaN fails.
    """
    return value is None or (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_TIMEOUT_MS / 1000  # no float() of a huge int
    )


def is_time_slice(value: Any) -> bool:
    """Say whether ``value`` is a time slice: seconds above 0, at most 1 (NaN fails)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def _time_slice(value: Any) -> float:
    if not is_time_slice(value):
        raise ImproperlyConfigured(
            f"time_slice must be a number of seconds above 0 and at most 1, not {value!r}."
        )
    return float(value)


def _positive_int(name: str, value: Any) -> int:
    if not (is_integer(value) and value >= 1):
        raise ImproperlyConfigured(f"{name} must be a positive integer, not {value!r}.")
    return value


def _count(name: str, value: Any) -> int | None:
    """Return the limit ``value`` (0 or ``None``: no limit, as ``None``)."""
    if not is_count(value):
        raise ImproperlyConfigured(f"{name} must be a non-negative number or None, not {value!r}.")
    return value or None


def _timeout(name: str, value: Any) -> float | None:
    """Return seconds PostgreSQL can take (0 or ``None``: the server's, as ``None``)."""
    if is_timeout(value):
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not value < 0:
        raise ImproperlyConfigured(
            f"{name} must be at most {MAX_TIMEOUT_MS / 1000} seconds, not {value!r}."
        )
    raise ImproperlyConfigured(f"{name} must be a non-negative number or None, not {value!r}.")


def server_side_cursors_disabled(alias: str) -> bool:
    """Say whether ``DATABASES[alias]`` is PostgreSQL with ``DISABLE_SERVER_SIDE_CURSORS``.

    What Django asks for behind a pooler in transaction mode (PgBouncer): its cursors
    then read a whole result at once (Django docs, "Transaction pooling and server-side
    cursors"), so an export from such an alias is read by ``COPY``, which needs no
    server-side cursor, or in keyset pages.
    """
    connection = connections[alias]
    return connection.vendor == "postgresql" and bool(
        connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    )


def unique_key_field(model: type[models.Model], key: str) -> models.Field:
    """Return ``model``'s field named ``key`` (``"pk"`` for the primary key).

    Raises ``ImproperlyConfigured`` unless it is a concrete, unique, non-null field of
    the model itself (a single column; no related lookups): keyset pages ordered by
    anything else could skip or repeat rows that tie at a page boundary.
    """
    opts = model._meta
    try:
        key_field = opts.pk if key == "pk" else opts.get_field(key)
    except FieldDoesNotExist:
        key_field = None
    if not isinstance(key_field, models.Field) or not key_field.concrete:
        raise ImproperlyConfigured(
            f"Keyset exports of {opts.label} need a key that is a field of the model, not {key!r}."
        )
    if not (key_field.primary_key or key_field.unique) or key_field.null:
        raise ImproperlyConfigured(
            f"The keyset key {opts.label}.{key_field.name} must be unique and not null, or rows "
            "that tie at a page boundary would be skipped or repeated. Use the primary key "
            "(the default) or a unique, non-null field."
        )
    return key_field


def build_plan(
    queryset: models.QuerySet,
    *,
    fields: Iterable[ExportField] | None = None,
    labels: Mapping[str, str] | None = None,
    columns: Sequence[ResolvedColumn] | None = None,
    format: str | None = None,
    format_classes: Sequence[type[ExportFormat]] | None = None,
    format_options: Mapping[str, Any] | None = None,
    export_format: ExportFormat | Callable[[Sequence[ResolvedColumn]], ExportFormat] | None = None,
    using: str | None = None,
    mode: str | None = None,
    keyset_key: str | None = None,
    copy_mode: bool | str | None = None,
    database_formatting: bool | None = None,
    prefetch: bool | None = None,
    chunk_size: int | None = None,
    buffer_size: int | None = None,
    time_slice: float | None = None,
    max_rows: int | None = None,
    statement_timeout: float | None = None,
    idle_in_transaction_timeout: float | None = None,
    user: Any = None,
    filename: str | None = None,
    time_zone: str | datetime.tzinfo | None = None,
    export_id: str | None = None,
) -> ExportPlan:
    """Return the validated :class:`ExportPlan` of exporting ``queryset``.

    What to export: ``fields`` (lookups, annotation names or
    :class:`~django_streamexport.columns.Column`), with header ``labels`` by name, or
    ``columns`` already resolved by the caller.  How to write it: ``export_format``
    (an instance, or a callable taking the columns), else the class named ``format``
    among ``format_classes`` (default ``STREAMEXPORT_FORMATS``; ``None`` names the
    first) built with ``format_options``, the options of that class
    (``{"delimiter": ";"}`` for CSV; one the class does not take raises
    ``ImproperlyConfigured`` naming the format).  ``None`` for any other option means its
    setting: ``using`` (``STREAMEXPORT_DATABASE``, then the queryset's database),
    ``mode`` (``"cursor"``), ``keyset_key`` (``"pk"``), ``copy_mode``
    (``STREAMEXPORT_COPY_MODE``), ``database_formatting``
    (``STREAMEXPORT_DATABASE_FORMATTING``), ``prefetch`` (on), ``chunk_size`` (rows,
    ``STREAMEXPORT_CHUNK_SIZE``), ``buffer_size`` (bytes, ``STREAMEXPORT_BUFFER_SIZE``),
    ``time_slice`` (seconds, ``STREAMEXPORT_TIME_SLICE``), ``max_rows``
    (``STREAMEXPORT_MAX_ROWS``; 0 means no limit), ``statement_timeout``
    and ``idle_in_transaction_timeout`` (seconds; ``STREAMEXPORT_STATEMENT_TIMEOUT``,
    ``STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT``; 0 keeps the server's), ``filename``
    (the model's ``verbose_name_plural``; cleaned, the extension added), ``time_zone``
    (``STREAMEXPORT_TIME_ZONE``: ``"current"``, a zone name or a ``tzinfo``; ``None``
    writes datetimes as the database returns them; :mod:`django_streamexport.timezones`).

    Raises :class:`~django_streamexport.exceptions.UnknownFormat` (a 400 for a
    request) when ``format`` names no offered format, and ``ImproperlyConfigured``,
    naming the option, for what the code configured wrongly: an unknown or to-many
    field, an invalid option value, ``prefetch_related()``, a keyset key that is not
    unique and non-null or a sliced queryset in keyset mode.  A cursor-mode export from a
    PostgreSQL alias with ``DISABLE_SERVER_SIDE_CURSORS`` is read through COPY or
    refused when its reader is chosen
    (:func:`~django_streamexport.readers.choose_reader`), still before a response starts.
    """
    if getattr(queryset, "_prefetch_related_lookups", ()):
        # The export is one query; refused before a response starts.
        raise ImproperlyConfigured(
            "An export cannot use prefetch_related(); export related values by lookup "
            '(such as "author__name").'
        )
    if columns is None:
        if fields is None:
            raise ImproperlyConfigured("An export needs fields (or resolved columns).")
        columns = resolve_columns(queryset, fields, labels)
    columns = tuple(columns)
    if not columns:
        raise ImproperlyConfigured("An export needs at least one field.")
    if export_format is None:
        classes = default_format_classes() if format_classes is None else format_classes
        if not classes:
            raise ImproperlyConfigured("No export formats are offered.")
        format_class = select_format_class(classes, format)
        instance = make_format(format_class, columns, format_options, source="format_options")
    elif isinstance(export_format, ExportFormat):
        instance = export_format
    else:
        instance = export_format(columns)
    if not instance.title:
        instance.title = str(queryset.model._meta.verbose_name_plural)
    zone = resolve_time_zone(_setting(time_zone, conf.TIME_ZONE))
    if zone is not None:
        instance.set_time_zone(zone)

    alias = using or conf.DATABASE or queryset.db
    if alias not in connections:
        raise ImproperlyConfigured(f"The export database {alias!r} is not in DATABASES.")
    mode = _setting(mode, "cursor")
    if mode not in MODES:
        raise ImproperlyConfigured(f'The export mode must be "cursor" or "keyset", not {mode!r}.')
    keyset_key = _setting(keyset_key, "pk")
    if mode == "keyset":
        unique_key_field(queryset.model, keyset_key)
        if queryset.query.is_sliced:
            raise ImproperlyConfigured("Keyset exports cannot read a sliced queryset.")
    copy_mode = _setting(copy_mode, conf.COPY_MODE)
    if copy_mode is not True and copy_mode is not False and copy_mode != "require":
        raise ImproperlyConfigured(
            f'copy_mode must be True, False or "require", not {copy_mode!r}.'
        )
    return ExportPlan(
        queryset=queryset,
        columns=columns,
        format=instance,
        using=alias,
        mode=mode,
        keyset_key=keyset_key,
        copy_mode=copy_mode,
        database_formatting=bool(_setting(database_formatting, conf.DATABASE_FORMATTING)),
        prefetch=bool(_setting(prefetch, True)),
        chunk_size=_positive_int("chunk_size", _setting(chunk_size, conf.CHUNK_SIZE)),
        buffer_size=_positive_int("buffer_size", _setting(buffer_size, conf.BUFFER_SIZE)),
        time_slice=_time_slice(_setting(time_slice, conf.TIME_SLICE)),
        max_rows=_count("max_rows", _setting(max_rows, conf.MAX_ROWS)),
        statement_timeout=_timeout(
            "statement_timeout", _setting(statement_timeout, conf.STATEMENT_TIMEOUT)
        ),
        idle_in_transaction_timeout=_timeout(
            "idle_in_transaction_timeout",
            _setting(idle_in_transaction_timeout, conf.IDLE_IN_TRANSACTION_TIMEOUT),
        ),
        user=user,
        time_zone=zone,
        filename=safe_filename(
            str(queryset.model._meta.verbose_name_plural) if filename is None else filename,
            instance.extension,
        ),
        export_id=export_id or uuid.uuid4().hex[:12],
    )
