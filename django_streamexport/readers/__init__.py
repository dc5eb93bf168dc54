"""How an export's rows are read, and the one function that chooses.

Four readers, all behind :class:`~django_streamexport.readers.base.Reader`:

* :class:`~django_streamexport.readers.copy.CopyReader`: PostgreSQL ``COPY ... TO
  STDOUT`` writes the CSV body itself (CSV by default, wherever COPY gives the same
  bytes; and CSV from an alias with ``DISABLE_SERVER_SIDE_CURSORS``);
* :class:`~django_streamexport.readers.cursor.PrefetchingCursorReader`: a server-side
  cursor whose next ``FETCH`` runs while a batch is rendered (PostgreSQL, psycopg 3);
* :class:`~django_streamexport.readers.cursor.CursorReader`: a server-side cursor read
  with ``fetchmany()`` (psycopg2, SQLite, other databases);
* :class:`~django_streamexport.readers.keyset.KeysetReader`: short page queries by a
  unique key (keyset mode: PgBouncer in transaction pooling, replicas).

:func:`choose_reader` picks one from the :class:`~django_streamexport.plan.ExportPlan`
alone, never from the stream's class or methods, so a custom stream class keeps every
reader.  Cursor readers also read cells as text spelled by PostgreSQL when the plan's
``database_formatting`` allows it (:mod:`django_streamexport.postgresql.text`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_streamexport.columns import compile_query
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.plan import server_side_cursors_disabled
from django_streamexport.postgresql.copy import copy_statement
from django_streamexport.postgresql.prefetch import prefetch_available
from django_streamexport.postgresql.text import TextUnavailable, text_select
from django_streamexport.readers.base import Reader
from django_streamexport.readers.copy import CopyReader
from django_streamexport.readers.cursor import CursorReader, PrefetchingCursorReader
from django_streamexport.readers.keyset import KeysetReader

if TYPE_CHECKING:
    from django_streamexport.plan import ExportPlan

__all__ = [
    "CopyReader",
    "CursorReader",
    "KeysetReader",
    "PrefetchingCursorReader",
    "Reader",
    "choose_reader",
]

logger = logging.getLogger("django_streamexport")


def choose_reader(plan: ExportPlan) -> Reader:
    """Return the reader for ``plan``, its ``reason`` saying why it was chosen.

    In order: keyset mode reads keyset pages; a CSV export with ``plan.copy_mode`` on (the
    default, ``STREAMEXPORT_COPY_MODE``) uses COPY when it gives the same bytes as the
    cursor path, else falls back (the reason, ``"not COPY: ..."``, first in the reader's
    and logged at INFO) or, with ``"require"``, raises ``ImproperlyConfigured`` (as it does
    for a format other than CSV); otherwise a server-side cursor, prefetching where the
    driver allows and ``plan.prefetch`` is on, reading cells as PostgreSQL's text where
    ``plan.database_formatting`` allows.  Formats other than CSV and databases other than
    PostgreSQL never use COPY and their reason does not mention it;
    ``database_formatting`` off (values spelled in Python) turns COPY off too, unless it
    is required.

    From a PostgreSQL alias with ``DISABLE_SERVER_SIDE_CURSORS`` (PgBouncer in
    transaction pooling) a cursor would load every row into memory, so such an export
    is read by COPY whenever COPY gives the same bytes, whatever ``plan.copy_mode`` (a
    CSV export with psycopg 3: COPY needs no server-side cursor and runs in one
    transaction), and raises ``ImproperlyConfigured`` naming why COPY cannot and what
    to do otherwise.  Compiles the export's query, so a filter the compiler refuses
    raises here, before any response.
    """
    if plan.mode == "keyset":
        return KeysetReader(plan, reason='export mode is "keyset"')
    query = compile_query(plan.queryset, plan.columns, plan.using)
    notes: list[str] = []
    no_cursors = server_side_cursors_disabled(plan.using)
    # COPY writes CSV from PostgreSQL only: other formats and databases are not considered
    # (no note, no log line) unless COPY is required.  COPY spells the cells in SQL, so
    # database formatting off opts out of it.
    wants_copy = plan.copy_mode == "require" or (
        plan.copy_mode is True
        and isinstance(plan.format, CSVFormat)
        and connections[plan.using].vendor == "postgresql"
    )
    if wants_copy and plan.copy_mode is True and not plan.database_formatting:
        wants_copy = False
        notes.append("not COPY: database formatting is off")
    if wants_copy or no_cursors:
        try:
            statement, params = copy_statement(plan, query)
        except TextUnavailable as exc:
            if plan.copy_mode == "require":
                raise ImproperlyConfigured(
                    f"COPY mode was required but cannot be used for this export: {exc}. "
                    "Set copy_mode=True to fall back to the cursor."
                ) from exc
            if no_cursors:
                raise ImproperlyConfigured(
                    f"DATABASES[{plan.using!r}] sets DISABLE_SERVER_SIDE_CURSORS, so a cursor "
                    "export would load every row into memory, and COPY, which needs no "
                    f"server-side cursor, cannot write this export: {exc}. Read it in keyset "
                    'pages (export_mode = "keyset" on the view or ModelAdmin, --mode keyset '
                    "on the command line), or export from an alias that connects without a "
                    "transaction-mode pooler (STREAMEXPORT_DATABASE)."
                ) from exc
            logger.info("Export %s: COPY mode falls back to the cursor: %s.", plan.export_id, exc)
            notes.append(f"not COPY: {exc}")
        else:
            reason = (
                "COPY mode is on"
                if plan.copy_mode
                else f"DATABASES[{plan.using!r}] sets DISABLE_SERVER_SIDE_CURSORS: COPY needs "
                "no server-side cursor"
            )
            return CopyReader(plan, statement, params, query=query, reason=reason)
    text = None
    if not plan.database_formatting:
        notes.append("values formatted in Python: database formatting is off")
    else:
        try:
            text = text_select(plan, query)
        except TextUnavailable as exc:
            notes.append(f"values formatted in Python: {exc}")
    if text is not None:
        notes.append("cells spelled by PostgreSQL")
    reader_class: type[CursorReader] = CursorReader
    if not plan.prefetch:
        notes.append("prefetching is off")
    elif not prefetch_available(connections[plan.using]):
        notes.append("the driver cannot prefetch")
    else:
        reader_class = PrefetchingCursorReader
    return reader_class(plan, query, text_select=text, reason="; ".join(notes))
