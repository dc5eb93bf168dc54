"""Keyset pagination: read an export as short page queries instead of one cursor.

Each page is one query, ``WHERE key > last ORDER BY key LIMIT chunk_size``:
no server-side cursor, no transaction held between pages.  On PostgreSQL with a
``statement_timeout`` (``STREAMEXPORT_STATEMENT_TIMEOUT``) each page runs in its
own short transaction that sets it with ``SET LOCAL``, so the limit bounds each
page; elsewhere pages run in autocommit.
That is what works through **PgBouncer in transaction pooling** for every
format (which requires ``DISABLE_SERVER_SIDE_CURSORS``, so a cursor export would
load every row; a CSV export is read by COPY there), on **hot-standby replicas**
(a long query there can be cancelled by recovery conflicts,
``max_standby_streaming_delay``; short pages rarely are)
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
from typing import TYPE_CHECKING, Any

from django.core.exceptions import EmptyResultSet
from django.db import connections, transaction

from django_streamexport.columns import as_sql
from django_streamexport.plan import unique_key_field
from django_streamexport.readers.base import Reader

if TYPE_CHECKING:
    from django_streamexport.plan import ExportPlan

__all__ = ["KeysetReader"]


class KeysetReader(Reader):
    """Read the export in pages of ``plan.chunk_size`` rows ordered by ``plan.keyset_key``.

    Each page is read whole before its rows are yielded, so nothing is held between
    pages; on PostgreSQL with a statement timeout it runs in a transaction of its own
    with the export's guards, otherwise in autocommit.  ``pages`` counts the page
    queries run.  The first page's query is compiled here, so a value the query
    compiler refuses raises :class:`~django_streamexport.exceptions.FiltersRefused`
    before a response starts.
    """

    name = "keyset"

    def __init__(self, plan: ExportPlan, *, reason: str = "") -> None:
        super().__init__(plan, reason=reason)
        self.key_field = unique_key_field(plan.model, plan.keyset_key)
        self.pages = 0
        key = self.key_field.attname
        lookups = [column.lookup for column in plan.columns]
        # The key is read as an extra last value, so exported columns stay as declared.
        self.values = plan.queryset.using(plan.using).order_by(key).values_list(*lookups, key)
        first_page = self.values[: plan.chunk_size].query
        self._first_select: tuple[str, Sequence[Any]] | None
        try:
            self._first_select = as_sql(first_page.get_compiler(using=plan.using))
        except EmptyResultSet:
            self._first_select = None

    def first_select(self) -> tuple[str, Sequence[Any]] | None:
        """Return the first page's query (``None`` when Django knows it matches nothing)."""
        return self._first_select

    def read(self) -> Iterator[list[tuple]]:
        plan, values = self.plan, self.values
        key = self.key_field.attname
        width = len(plan.columns)
        connection = connections[plan.using]
        guarded = connection.vendor == "postgresql" and bool(plan.statement_timeout)
        last: Any = None
        while True:
            page_query = values if last is None else values.filter(**{f"{key}__gt": last})
            page_transaction: AbstractContextManager[Any] = (
                transaction.atomic(using=plan.using) if guarded else nullcontext()
            )
            with page_transaction:
                if guarded:
                    self.apply_guards(connection)
                page = list(page_query[: plan.chunk_size])
            self.pages += 1
            if page:
                yield [row[:width] for row in page]
            if len(page) < plan.chunk_size:
                return
            last = page[-1][width]
