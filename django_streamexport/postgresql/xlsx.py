"""PostgreSQL spells some XLSX cells: the ``SELECT`` behind database formatting of a workbook.

:func:`xlsx_select` wraps the queryset's SQL in one that returns, for each column
:meth:`~django_streamexport.formats.xlsx.XLSXFormat.database_cells` names, the cell's XML
as :class:`~django_streamexport.formats.xlsx.XLSXFormat` writes it (a ``<c>`` element,
``<c/>`` for ``NULL``), and every other column as it is::

    SELECT se.c0, <cell of c1>, ... FROM (<the queryset's SQL>) AS se(c0, c1, ...)

The columns spelled here are those Python spells at a higher cost than PostgreSQL:
decimals (psycopg builds a ``Decimal`` per value, which Python then prints), floats and
datetimes (``repr()`` of a float, of a date serial, costs Python more than PostgreSQL's
shortest output).  Text costs PostgreSQL more than Python (each check scans the value
again, where Python checks a whole column of a batch at once), so it stays with Python;
the benchmark measured both (README, Performance).

Spellings, each equal to the Python path's byte for byte (``tests/test_formats_xlsx.py``
compares them on awkward values):

* decimals: as PostgreSQL prints them (exact, the scale kept, as ``format(value, "f")``);
  ``NaN`` and the infinities (``scale()`` is ``NULL`` for them) as inline strings, as
  ``str()`` spells them;
* floats: as Python's ``repr()``, as CSV's database formatting spells them
  (:mod:`django_streamexport.postgresql.text`, with ``extra_float_digits`` 1 from
  :func:`~django_streamexport.postgresql.text.prepare_session`); infinities and NaN as
  inline strings ``inf``, ``-inf``, ``nan``;
* datetimes (aware, under ``USE_TZ``): the wall time in the workbook's zone
  (``timezone(zone, value)``, once
  :func:`~django_streamexport.postgresql.text.server_zone` found PostgreSQL's offsets of
  the zone equal to Python's) as ``date_part('epoch', wall) / 86400 + 25569``: its
  microseconds since 1970 divided by 10**6 and rounded once to a double, then divided by
  86400, then shifted, which is how Python computes the serial; printed shortest, as
  ``repr()`` but a whole number without ``.0`` (the Python path drops it too).  Before
  1900-03-01 the wall time's ISO text, as ``isoformat()`` writes it; from 2250 on, where
  PostgreSQL's double of the microseconds since 2000 is no longer exact, the serial comes
  from ``extract()``'s exact numeric (PostgreSQL 14 and later).

What it cannot do raises :class:`~django_streamexport.postgresql.text.TextUnavailable`
with the reason, and the export formats every value in Python: what
:meth:`~django_streamexport.formats.xlsx.XLSXFormat.database_text_refusal` refuses (a
subclass that changes how cells are written, no column PostgreSQL spells), values Django
converts after reading, and a time zone PostgreSQL cannot name or does not agree on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.xlsx import XLSXFormat
from django_streamexport.postgresql.text import TextUnavailable, _float_sql, server_zone

if TYPE_CHECKING:
    from django_streamexport.columns import CompiledQuery
    from django_streamexport.plan import ExportPlan

__all__ = ["cell_sql", "xlsx_select"]


def _text_cell(text: str) -> str:
    """Return SQL for the inline-string cell of SQL text ``text`` (which needs no escaping)."""
    return f"'<c t=\"inlineStr\"><is><t>' || {text} || '</t></is></c>'"


def _number_cell(text: str) -> str:
    return f"'<c><v>' || {text} || '</v></c>'"


def _datetime_sql(c: str, zone: str) -> str:
    wall = f"timezone({zone}, {c})"

    def serial(seconds: str) -> str:
        return f"'<c s=\"3\"><v>' || ({seconds} / 86400 + 25569)::text || '</v></c>'"

    iso = f"replace(to_char({wall}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '')"
    # The common case first: from 1900-03-02 UTC on, the wall time is after 1900-03-01 in
    # every zone (offsets are below a day); until 2250, PostgreSQL's microseconds since
    # 2000 are below 2**53, so date_part() rounds its double once.  Elsewhere extract()'s
    # exact numeric (PostgreSQL 14 and later) is rounded once.
    common = serial(f"date_part('epoch', {wall})")
    exact = serial(f"extract(epoch FROM {wall})::float8")
    return (
        f"(CASE WHEN {c} >= '1900-03-02 00:00:00+00'::timestamptz"
        f" AND {c} < '2250-01-01 00:00:00+00'::timestamptz THEN {common}"
        f" WHEN {wall} >= '1900-03-01'::timestamp THEN {exact}"
        f" ELSE {_text_cell(iso)} END)"
    )


def cell_sql(column: ResolvedColumn, ref: str, *, zone: str | None = None) -> str:
    """Return the SQL expression of ``column``'s cell XML (``<c/>`` for ``NULL``).

    ``ref`` is the column's reference in the outer query; ``zone`` the workbook's time
    zone as SQL (:func:`~django_streamexport.postgresql.text.zone_sql`), for datetimes.  Raises
    :class:`~django_streamexport.postgresql.text.TextUnavailable` for a column whose
    cells SQL does not spell here.
    """
    if column.choices is None and column.kind == kinds.DECIMAL:
        # The common case first; scale() is NULL for NaN, the infinities and NULL.
        cell = (
            f"(CASE WHEN scale({ref}) IS NOT NULL THEN {_number_cell(ref)}"
            f" ELSE {_text_cell(f'{ref}::text')} END)"
        )
    elif column.choices is None and column.kind == kinds.FLOAT:
        x = f"{ref}::float8"
        # The common case first: a finite value with a fraction, printed as repr() does
        # below 1e15 (PostgreSQL switches to an exponent there, Python at 1e16).
        cell = (
            f"(CASE WHEN {x} <> trunc({x}) AND abs({x}) < 1e15 THEN {_number_cell(f'{x}::text')}"
            f" WHEN {x} IN ('Infinity', '-Infinity', 'NaN') THEN {_text_cell(_float_sql(ref))}"
            f" ELSE {_number_cell(_float_sql(ref))} END)"
        )
    elif column.choices is None and column.kind == kinds.DATETIME and zone is not None:
        cell = _datetime_sql(ref, zone)
    else:
        raise TextUnavailable(f"PostgreSQL does not spell the XLSX cells of column {column.name!r}")
    return f"coalesce({cell}, '<c/>')"


def xlsx_select(plan: ExportPlan, query: CompiledQuery) -> tuple[str, list[Any]]:
    """Return the ``SELECT`` (and its parameters) of ``plan``'s rows with some cells as XML.

    The columns :meth:`~django_streamexport.formats.xlsx.XLSXFormat.database_cells`
    names come out as ``text``, their cells' XML; the others as the query returns them,
    for :meth:`~django_streamexport.formats.xlsx.XLSXFormat.render_text_rows`.  Run it
    after :func:`~django_streamexport.postgresql.text.prepare_session` in the same
    transaction.  Raises :class:`~django_streamexport.postgresql.text.TextUnavailable`
    naming the reason when PostgreSQL cannot give the same cells as the format.
    """
    export_format = plan.format
    assert isinstance(export_format, XLSXFormat)
    refusal = export_format.database_text_refusal()
    if refusal is not None:
        raise TextUnavailable(refusal)
    if query.converted:
        # from_db_value() and backend converters expect the typed value.
        raise TextUnavailable(f"Django converts the values of column {query.converted[0]!r}")
    spelled_columns = export_format.database_cells()
    zone = None
    if any(
        spelled and column.kind == kinds.DATETIME
        for column, spelled in zip(plan.columns, spelled_columns, strict=True)
    ):
        zone = server_zone(plan.using, export_format.time_zone)[0]
    expressions = [
        cell_sql(column, f"se.c{position}", zone=zone) if spelled else f"se.c{position}"
        for position, (column, spelled) in enumerate(
            zip(plan.columns, spelled_columns, strict=True)
        )
    ]
    names = ", ".join(f"c{index}" for index in range(query.width))
    select = f"SELECT {', '.join(expressions)} FROM ({query.sql}) AS se({names})"
    return select, list(query.params)
