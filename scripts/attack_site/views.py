"""The example project's flights export (flights.views.FlightExport), one knob changed each.

Each keeps FlightExport's fields and its ``carrier``, ``origin`` and ``month`` parameters.
"""

from __future__ import annotations

from django.db.models import QuerySet
from flights.models import Flight
from flights.views import FlightExport

from django_streamexport.formats.csv import CSVFormat


class CopyFlightExport(FlightExport):
    """CSV through ``COPY ... TO STDOUT`` (COPY mode required, so never the cursor)."""

    copy_mode = "require"
    format_classes = (CSVFormat,)


class KeysetFlightExport(FlightExport):
    """Keyset pages by primary key: short queries, no transaction held between pages."""

    export_mode = "keyset"


class SlowFlightExport(FlightExport):
    """The flights of 1 January 2013 come at once; every later row sleeps 10 ms in
    PostgreSQL, so a fetch of ``chunk_size`` rows runs far past the 0.5 s statement timeout."""

    statement_timeout = 0.5

    def get_queryset(self) -> QuerySet[Flight]:
        return (
            super()
            .get_queryset()
            .extra(
                where=[
                    "(flights_flight.time_hour < '2013-01-02T00:00:00Z'"
                    " OR pg_sleep(0.01) IS NOT NULL)"
                ]
            )
        )


class SlowCopyFlightExport(SlowFlightExport):
    """The slow query through COPY: the statement timeout bounds the whole COPY."""

    copy_mode = "require"
    format_classes = (CSVFormat,)


class IdleFlightExport(FlightExport):
    """Small fetches and chunks and a 1 s idle-in-transaction bound: a paused client trips it."""

    chunk_size = 50
    buffer_size = 4096
    idle_in_transaction_timeout = 1


class IdleCopyFlightExport(IdleFlightExport):
    """The idle bound on a COPY export (the reader's idle watch, not PostgreSQL's)."""

    copy_mode = "require"
    format_classes = (CSVFormat,)


class RowLimitFlightExport(FlightExport):
    """At most 1,000 rows: a larger export fails with ``row_limit`` after the 1,000th."""

    max_rows = 1000


class RowLimitKeysetFlightExport(RowLimitFlightExport):
    """The row limit in keyset pages: what works behind PgBouncer in transaction pooling,
    where a cursor export cannot run and COPY cannot apply a row limit."""

    export_mode = "keyset"
