"""Keyset pagination: read an export as short page queries instead of one cursor.

Each page is one query, ``WHERE key > last ORDER BY key LIMIT chunk_size``:
no server-side cursor, no transaction held between pages.  On PostgreSQL with a
``statement_timeout`` (``STREAMEXPORT_STATEMENT_TIMEOUT``) each page runs in its
own short transaction that sets it with ``SET LOCAL``, so the limit bounds each
page; elsewhere pages run in autocommit.
That is what works through **PgBouncer in transaction pooling** (which
requires ``DISABLE_SERVER_SIDE_CURSORS``, so a cursor export would load every
row), on **hot-standby replicas** (a long query there can be cancelled by
recovery conflicts, ``max_standby_streaming_delay``; short pages rarely are)
and for **very long exports** (no transaction pinning ``VACUUM``'s horizon, no
``idle_in_transaction_session_timeout`` on a slow client).

The price is consistency: each page sees the database as of its own query
(READ COMMITTED), not one snapshot.  Rows inserted during the export with a
key above the current page appear, rows below do not; rows updated between
pages are exported as they were when their page was read; a row whose key
changes can be skipped or exported twice.  With an ever-increasing key (an
auto-increment primary key) and append-only data this is usually what you
want; use the default cursor mode when the export must be one snapshot.

The export is ordered by the key (whatever the queryset's ``order_by()``),
which must be unique and not null so that no two rows tie at a page
boundary: ties in other columns do not matter.  An index on the key makes
every page an index range scan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import connections, models, transaction

from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.base import ExportFormat
from django_streamexport.streaming import ExportStream

__all__ = ["KeysetExportStream", "unique_key_field"]


def unique_key_field(model: type[models.Model], key: str) -> models.Field:
    """Return ``model``'s field named ``key`` (``"pk"`` for the primary key).

    Raises ``ImproperlyConfigured`` unless it is a concrete, unique, non-null
    field of the model itself (a single column; no related lookups).
    """
    opts = model._meta
    try:
        field = opts.pk if key == "pk" else opts.get_field(key)
    except FieldDoesNotExist:
        field = None
    if not isinstance(field, models.Field) or not field.concrete:
        raise ImproperlyConfigured(
            f"Keyset exports of {opts.label} need a key that is a field of the model, not {key!r}."
        )
    if not (field.primary_key or field.unique) or field.null:
        raise ImproperlyConfigured(
            f"The keyset key {opts.label}.{field.name} must be unique and not null, or rows "
            "that tie at a page boundary would be skipped or repeated. Use the primary key "
            "(the default) or a unique, non-null field."
        )
    return field


class KeysetExportStream(ExportStream):
    """An :class:`ExportStream` that reads pages by key instead of a cursor.

    ``key`` (default ``"pk"``) names a unique, non-null field of the
    queryset's model; ``chunk_size`` rows per page.  Counter ``pages`` is the
    number of page queries run.  Raises ``ImproperlyConfigured`` for a key
    that is not unique and not null, or a sliced queryset.
    """

    def __init__(
        self,
        queryset: models.QuerySet,
        columns: Sequence[ResolvedColumn],
        export_format: ExportFormat,
        *,
        key: str = "pk",
        **kwargs: Any,
    ) -> None:
        self.key_field = unique_key_field(queryset.model, key)
        if queryset.query.is_sliced:
            raise ImproperlyConfigured("Keyset exports cannot read a sliced queryset.")
        self.pages = 0
        super().__init__(queryset, columns, export_format, **kwargs)

    def check_cursor_support(self) -> None:
        """Accept every database: pages need no server-side cursor."""

    def iter_rows(self) -> Iterator[tuple]:
        """Yield the rows in key order, one short query per ``chunk_size`` rows.

        Each page is read whole (``chunk_size`` rows) before its rows are
        yielded, so nothing is held between pages; on PostgreSQL with a
        statement timeout it runs in a transaction of its own with the
        export's guards (:meth:`apply_guards`), otherwise in autocommit.
        """
        key = self.key_field.attname
        lookups = [column.lookup for column in self.columns]
        width = len(lookups)
        queryset = self.queryset.using(self.using).order_by(key)
        # The key is read as an extra last value, so exported columns stay as declared.
        values = queryset.values_list(*lookups, key)
        guarded = connections[self.using].vendor == "postgresql" and bool(self.statement_timeout)
        last: Any = None
        while True:
            page_query = values if last is None else values.filter(**{f"{key}__gt": last})
            page_transaction: AbstractContextManager[Any] = (
                transaction.atomic(using=self.using) if guarded else nullcontext()
            )
            with page_transaction:
                if guarded:
                    self.apply_guards()
                page = list(page_query[: self.chunk_size])
            self.pages += 1
            for row in page:
                yield row[:width]
            if len(page) < self.chunk_size:
                return
            last = page[-1][width]
