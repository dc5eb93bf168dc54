"""PostgreSQL spells the CSV cells: the ``SELECT`` behind COPY mode and fast cursor exports.

:func:`text_select` wraps the queryset's SQL in one that returns, for each column, the
exact text :class:`~django_streamexport.formats.csv.CSVFormat` would write for the value
(``NULL`` for an empty cell)::

    SELECT <one text expression per column> FROM (<the queryset's SQL>) AS se(c0, ...)

COPY mode (:mod:`django_streamexport.postgresql.copy`) sends it through ``COPY ... TO STDOUT``;
a cursor export (:class:`~django_streamexport.streaming.ExportStream` with
``database_formatting``, the default) fetches it from its server-side cursor, so Python
only quotes and joins strings: no parsing of integers, decimals, dates and datetimes into
Python objects and back into text (benchmark, 1M rows over gunicorn: 5.4x -> 2.7x the
time of ``COPY``).

Spellings, each equal to the Python path's (``tests/test_postgresql_copy.py`` compares the bytes):

* text: as stored, with the ``'`` formula-escaping prefix decided in SQL (the first code
  point, ``ascii(c)``, is one of ``= + - @``, tab, CR, LF; PostgreSQL text cannot hold NUL);
  the empty string is returned as NULL, because COPY quotes ``""`` and Python's ``csv``
  does not;
* booleans ``true``/``false``; integers, decimals, dates and UUIDs as PostgreSQL prints
  them (decimals exact, the scale kept, as ``format(Decimal, "f")``); floats spelled as
  Python's ``repr()`` (``100.0``, ``inf``, ``nan``, no exponent below 1e16);
* datetimes ``to_char`` ISO 8601 with ``T``, microseconds only when non-zero (as
  ``isoformat()``) and the offset ``+00:00`` of the session time zone, which
  :func:`prepare_session` sets to the connection's (``UTC`` under ``USE_TZ``) for the
  export transaction; with an export time zone (``time_zone``), the wall time there
  (``timezone(zone, value)``, which leaves the session and so the query's own results
  alone) and its offset (:func:`server_zone` first checks that PostgreSQL's offsets of
  the zone agree with Python's); times likewise; durations as
  ``duration_iso_string()``; binary data base64;
* choices display labels through ``CASE``.

:func:`text_select` hands an XLSX export to :func:`django_streamexport.postgresql.xlsx.xlsx_select`,
which spells some of its cells as XML.  What SQL cannot spell raises
:class:`TextUnavailable` with the reason: a format other than
:class:`~django_streamexport.formats.csv.CSVFormat` (and XLSX) or one that changes its converters, a
column whose values Django converts after reading (``from_db_value()``), JSON and other
columns whose text form PostgreSQL spells differently (``jsonb`` puts spaces after ``:``
and ``,``), and another database than PostgreSQL.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, transaction

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.csv import FORMULA_TRIGGERS, CSVFormat, escape_formula

if TYPE_CHECKING:
    from django_streamexport.columns import CompiledQuery
    from django_streamexport.plan import ExportPlan


class TextUnavailable(Exception):
    """PostgreSQL cannot spell this export's cells as the format does; the message says why."""


#: The export's time zone as SQL and its usual offsets (:func:`server_zone`), or ``None``.
Zone = tuple[str, list] | None


#: Code points of the formula triggers.  All are below 65 ("A"), so most text skips the
#: check; NUL cannot occur in PostgreSQL text, and ``ascii('')`` is 0.
_TRIGGER_CODES = ", ".join(str(ord(t)) for t in FORMULA_TRIGGERS if t != "\0")
assert all(ord(t) < 65 for t in FORMULA_TRIGGERS)


# The expressions below make few function calls per value: each call costs about 0.1 s
# per million rows, as much as writing the value (escaped text went from 344 ms to 163 ms
# per million values on the benchmark machine).


def _escaped(c: str, *, empty_as_null: bool = False) -> str:
    """Return SQL for text ``c`` with :func:`escape_formula`'s ``'`` prefix."""
    empty = f" WHEN {c} = '' THEN NULL" if empty_as_null else ""
    return (
        f"(CASE WHEN ascii({c}) > 64 THEN {c}"
        f" WHEN ascii({c}) IN ({_TRIGGER_CODES}) THEN '''' || {c}{empty} ELSE {c} END)"
    )


def _text_sql(c: str, *, escape: bool) -> str:
    # '' is written as NULL: Python's csv writes it unquoted, COPY would quote it.
    text = f"{c}::text"
    return _escaped(text, empty_as_null=True) if escape else f"NULLIF({text}, '')"


def _float_sql(c: str) -> str:
    # Python's repr(): "inf"/"nan", integral values with ".0", and no exponent below 1e16
    # where PostgreSQL switches to one at 1e15.
    x = f"{c}::float8"
    digits = f"replace(split_part(abs({x})::text, 'e', 1), '.', '')"
    return (
        # The common case first: a finite value with a fraction, spelled alike.
        f"(CASE WHEN {x} <> trunc({x}) AND abs({x}) < 1e15 THEN {x}::text"
        f" WHEN {x} = 'Infinity'::float8 THEN 'inf'"
        f" WHEN {x} = '-Infinity'::float8 THEN '-inf'"
        f" WHEN {x} = 'NaN'::float8 THEN 'nan'"
        f" WHEN abs({x}) >= 1e15 AND abs({x}) < 1e16 THEN"
        f" (CASE WHEN {x} < 0 THEN '-' ELSE '' END) ||"
        f" (CASE WHEN length({digits}) <= 16 THEN rpad({digits}, 16, '0') || '.0'"
        f" ELSE left({digits}, 16) || '.' || substr({digits}, 17) END)"
        f" WHEN abs({x}) < 1e15 AND {x} = trunc({x}) THEN {x}::text || '.0'"
        f" ELSE {x}::text END)"
    )


def _duration_sql(c: str) -> str:
    # django.utils.duration.duration_iso_string(): sign, then the absolute value's
    # days, hours, minutes, seconds and (only when non-zero) microseconds.  mod(), not
    # "%%": the driver unescapes "%%" only in a statement with parameters.
    us = f"(extract(epoch FROM {c}) * 1000000)::bigint"
    a = f"abs({us})"
    return (
        f"((CASE WHEN {us} < 0 THEN '-' ELSE '' END) || 'P' || ({a} / 86400000000)::text || 'DT'"
        f" || lpad(mod({a} / 3600000000, 24)::text, 2, '0') || 'H'"
        f" || lpad(mod({a} / 60000000, 60)::text, 2, '0') || 'M'"
        f" || lpad(mod({a} / 1000000, 60)::text, 2, '0')"
        f" || (CASE WHEN mod({a}, 1000000) <> 0 THEN '.' || lpad(mod({a}, 1000000)::text, 6, '0')"
        f" ELSE '' END) || 'S')"
    )


def _datetime_sql(c: str, *, utc: bool) -> str:
    # One to_char() (the costly part); ".000000" is dropped as isoformat() drops it.  In
    # a UTC session the offset is a constant, which saves a replace() per value.
    if utc:
        return f"replace(to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), '.000000+', '+')"
    return (
        f"replace(replace(to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US|TZH:TZM'), '.000000|', ''),"
        f" '|', '')"
    )


#: Instants whose wall time is inside years 1 to 9999 in every zone (offsets stay below a
#: day): a zoned datetime outside them is checked, and written in UTC past the ends, as
#: Python does (zoned_datetime_text()).
_ZONE_SAFE = (
    "'0001-01-02 00:00:00+00'::timestamptz",
    "'9999-12-31 00:00:00+00'::timestamptz",
)


def zone_sql(zone: datetime.tzinfo) -> str | None:
    """Return the SQL that names ``zone`` for ``timezone(zone, ...)``, or ``None``.

    A named zone (``zoneinfo.ZoneInfo``'s ``key``, pytz's ``zone``) as a text literal, a
    fixed offset (``datetime.timezone``) as an ``INTERVAL`` (ISO sign: east is positive).
    ``None`` for a zone SQL cannot name.
    """
    if isinstance(zone, datetime.timezone):
        offset = zone.utcoffset(None)
        seconds = int(offset.total_seconds())
        if offset != datetime.timedelta(seconds=seconds):
            return None  # sub-second offsets: none in the tz database
        sign, seconds = ("-" if seconds < 0 else "+"), abs(seconds)
        return f"INTERVAL '{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'"
    name = getattr(zone, "key", None) or getattr(zone, "zone", None)
    # No "%": the SQL goes through the driver's parameter formatting (or not, without any).
    if not isinstance(name, str) or not name or "%" in name:
        return None
    return "'" + name.replace("'", "''") + "'"


def offset_text(offset: datetime.timedelta) -> str:
    """Return ``offset`` as ``isoformat()`` writes it: ``+01:00``, ``-03:30``, ``+00:53:28``."""
    return datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone(offset)).isoformat()[19:]


def zone_offsets(zone: datetime.tzinfo, now: datetime.datetime | None = None) -> list:
    """Return ``zone``'s UTC offsets (``timedelta``) at 15 January and 15 July of the years
    1970 to 2037 and of the current year, the current ones first: the offsets most rows have."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    years = [now.year, *range(2037, 1969, -1)]
    offsets: list = []
    for year in years:
        for month in (1, 7):
            instant = datetime.datetime(year, month, 15, 12, tzinfo=datetime.timezone.utc)
            offset = instant.astimezone(zone).utcoffset()
            if offset is not None and offset not in offsets:
                offsets.append(offset)
    return offsets


def _offset_sql(interval: str) -> str:
    """Return SQL spelling the offset ``interval`` as :func:`offset_text` does (any offset)."""
    s = f"abs(extract(epoch FROM {interval})::integer)"
    return (
        f"((CASE WHEN {interval} < INTERVAL '0' THEN '-' ELSE '+' END)"
        f" || lpad(({s} / 3600)::text, 2, '0') || ':' || lpad(mod({s} / 60, 60)::text, 2, '0')"
        f" || (CASE WHEN mod({s}, 60) <> 0 THEN ':' || lpad(mod({s}, 60)::text, 2, '0')"
        " ELSE '' END))"
    )


def _zoned_datetime_sql(c: str, zone: str, offsets: list) -> str:
    """Return SQL spelling timestamptz ``c`` as :func:`zoned_datetime_text` does in ``zone``.

    The wall time in ``zone`` (``timezone()``, whatever the session's time zone), then its
    offset: ``offsets`` (the zone's usual ones) are matched by one simple ``CASE`` (the
    offset computed once), any other offset is spelled by arithmetic.  Within a day of
    year 1 or 9999 the wall time is checked, and written in UTC past the ends.
    """
    wall = f"timezone({zone}, {c})"
    utc_wall = f"timezone('UTC', {c})"
    interval = f"({wall} - {utc_wall})"
    whens = " ".join(
        f"WHEN INTERVAL '{int(o.total_seconds())} seconds' THEN '{offset_text(o)}'" for o in offsets
    )
    offset = f"(CASE {interval} {whens} ELSE {_offset_sql(interval)} END)"
    local = f"replace(to_char({wall}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '') || {offset}"
    utc = f"replace(to_char({utc_wall}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US'), '.000000', '') || '+00:00'"
    low, high = _ZONE_SAFE
    in_range = (
        f"({c} >= {low} AND {c} < {high}) OR ({wall} >= '0001-01-01'::timestamp"
        f" AND {wall} < '10000-01-01'::timestamp)"
    )
    return f"(CASE WHEN {in_range} THEN {local} ELSE {utc} END)"


def _time_sql(c: str) -> str:
    ts = f"('2000-01-01'::date + {c})"
    return f"replace(replace(to_char({ts}, 'HH24:MI:SS.US|'), '.000000|', ''), '|', '')"


_SQL_BY_KIND = {
    kinds.FLOAT: _float_sql,
    kinds.BOOLEAN: lambda c: f"(CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END)",
    kinds.TIME: _time_sql,
    kinds.DURATION: _duration_sql,
    kinds.BINARY: lambda c: f"translate(encode({c}, 'base64'), E'\\n', '')",
}

#: Kinds whose type's output function already gives the CSV text (dates: DateStyle ISO).
#: COPY calls it itself; a query returns the value cast to text.
_PRINTED_AS_IS = (kinds.INTEGER, kinds.DECIMAL, kinds.DATE, kinds.UUID)


def _value_sql(
    kind: str, ref: str, *, escape: bool, utc: bool, typed: bool, zone: Zone = None
) -> str | None:
    """Return the SQL expression for a ``kind`` value, or ``None`` if SQL cannot spell it.

    ``typed``: the expression may keep a type that COPY prints as the CSV text (a cast
    per value costs about 0.07 s per million rows); otherwise it is ``text``.  ``zone``:
    the export's time zone as SQL and its usual offsets, for datetimes; ``None`` spells
    them in the session's time zone.
    """
    if kind == kinds.TEXT:
        return _text_sql(ref, escape=escape)
    if kind == kinds.DATETIME:
        sql = _zoned_datetime_sql(ref, *zone) if zone else _datetime_sql(ref, utc=utc)
    elif kind in _PRINTED_AS_IS:
        sql = ref if typed and not escape else f"{ref}::text"
    elif (expression := _SQL_BY_KIND.get(kind)) is not None:
        sql = expression(ref)
    else:
        return None
    return _escaped(sql) if escape else sql


def column_sql(
    column: ResolvedColumn,
    ref: str,
    export_format: CSVFormat,
    *,
    utc: bool = False,
    typed: bool = False,
    zone: Zone = None,
) -> tuple[str, list[Any]]:
    """Return the SQL expression (and its parameters) that spells ``column`` as CSV does.

    ``ref`` is the column's reference in the outer query; ``utc`` says the session time
    zone is UTC (a cheaper datetime expression); ``typed`` lets integers, decimals,
    dates and UUIDs keep their type, for COPY, which prints them as the CSV text;
    ``zone`` (:func:`zone_sql`'s SQL and :func:`zone_offsets`) spells datetimes in the
    export's time zone.
    Raises :class:`TextUnavailable` for a kind whose spelling SQL cannot reproduce.
    """
    escape = column.escape_formulas
    if escape is None:
        escape = export_format.escape_formulas and column.kind == kinds.TEXT
    if column.choices is not None:
        # CASE over the choices, labels escaped here as the converter would; values not
        # among the choices are written as stored (escaped only when stored as text).
        field = column.model_field
        stored_kind = kinds.kind_of_field(field) if field is not None else kinds.OTHER
        escape_other = escape and stored_kind == kinds.TEXT
        # text, as the labels in the other branches
        other = _value_sql(stored_kind, ref, escape=escape_other, utc=utc, typed=False, zone=zone)
        if other is None:
            raise TextUnavailable(f"column {column.name!r} stores {stored_kind} values")
        params: list[Any] = []
        whens = []
        for value, label in column.choices.items():
            text = label if label != "" else None
            if escape and text is not None:
                text = escape_formula(text)
            whens.append("WHEN %s THEN %s")
            params += [value, text]
        return f"(CASE {ref} {' '.join(whens)} ELSE {other} END)", params
    sql = _value_sql(column.kind, ref, escape=escape, utc=utc, typed=typed, zone=zone)
    if sql is None:
        raise TextUnavailable(
            f"column {column.name!r} holds {column.kind} values, which PostgreSQL spells "
            "differently from the CSV format"
        )
    return sql, []


def text_select(
    plan: ExportPlan, query: CompiledQuery, *, typed: bool = False
) -> tuple[str, list[Any]]:
    """Return the ``SELECT`` (and its parameters) of ``plan``'s cells as the format's text.

    ``query`` is the export's compiled ``values_list()`` query
    (:func:`~django_streamexport.columns.compile_query`), wrapped here.  The columns
    come out in order as ``text`` (``NULL`` for an empty cell), or with ``typed`` (for
    COPY) as types COPY prints as that text.  Run it after :func:`prepare_session` in
    the same transaction.  Raises :class:`TextUnavailable` naming the reason when
    PostgreSQL cannot give the same text as the format.
    """
    export_format = plan.format
    refusal = export_format.database_text_refusal()
    if refusal is None and typed and not isinstance(export_format, CSVFormat):
        refusal = f"the format is {export_format.format!r}, not CSV"  # COPY writes CSV
    if refusal is not None:
        raise TextUnavailable(refusal)
    connection = connections[plan.using]
    if connection.vendor != "postgresql":
        raise TextUnavailable(f"database {plan.using!r} is {connection.vendor}")
    if query.empty:
        raise TextUnavailable("the queryset can match no rows")
    if not isinstance(export_format, CSVFormat):
        from django_streamexport.formats.xlsx import XLSXFormat
        from django_streamexport.postgresql.xlsx import xlsx_select

        if not isinstance(export_format, XLSXFormat):
            raise TextUnavailable(f"the format is {export_format.format!r}, not CSV")
        return xlsx_select(plan, query)
    names = [f"c{index}" for index in range(query.width)]
    # The export's session time zone (prepare_session()); "+00:00" is a constant in UTC.
    utc = connection.timezone_name.upper() in ("UTC", "ETC/UTC")

    def spell(zone: Zone) -> tuple[list[str], list[Any]]:
        expressions: list[str] = []
        params: list[Any] = []
        for position, column in enumerate(plan.columns):
            sql, column_params = column_sql(
                column, f"se.c{position}", export_format, utc=utc, typed=typed, zone=zone
            )
            expressions.append(sql)
            params += column_params
        return expressions, params

    expressions, params = spell(None)  # raises for what SQL cannot spell, zone or not
    if query.converted:
        # from_db_value() and backend converters expect the typed value.
        raise TextUnavailable(f"Django converts the values of column {query.converted[0]!r}")
    if export_format.time_zone is not None and any(
        column.kind == kinds.DATETIME for column in plan.columns
    ):
        # Asks PostgreSQL once per zone, and only for an export SQL can spell otherwise.
        expressions, params = spell(server_zone(plan.using, export_format.time_zone))
    select = f"SELECT {', '.join(expressions)} FROM ({query.sql}) AS se({', '.join(names)})"
    return select, params + list(query.params)


#: (alias, zone SQL) whose offsets PostgreSQL and Python were found to agree on.
_AGREED_ZONES: set[tuple[str, str]] = set()


def server_zone(using: str, zone: datetime.tzinfo) -> tuple[str, list]:
    """Return ``zone`` as SQL and its usual offsets, once PostgreSQL is known to agree.

    Both read the IANA time zone database, but from their own copies (PostgreSQL's may
    be compiled in, or older than the ``tzdata`` Python reads, and lack a zone such as
    Europe/Kyiv).  The first export in a zone, per database alias and process, asks
    PostgreSQL for the zone's offsets at the instants :func:`zone_offsets` samples and
    compares them with Python's.  Raises :class:`TextUnavailable` (the export then
    formats values in Python) for a zone SQL cannot name, one PostgreSQL does not know,
    or offsets that differ.
    """
    sql = zone_sql(zone)
    if sql is None:
        raise TextUnavailable(f"PostgreSQL cannot name the time zone {zone!r}")
    offsets = zone_offsets(zone)
    if (using, sql) in _AGREED_ZONES:
        return sql, offsets
    instants = [
        datetime.datetime(year, month, 15, 12, tzinfo=datetime.timezone.utc)
        for year in range(1970, 2038)
        for month in (1, 7)
    ]
    expected = [instant.astimezone(zone).utcoffset() for instant in instants]
    connection = connections[using]
    try:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(
                f"SELECT timezone({sql}, t) - timezone('UTC', t)"
                " FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS i(t, n) ORDER BY n",
                [instants],
            )
            found = [row[0] for row in cursor.fetchall()]
    except DatabaseError as exc:
        raise TextUnavailable(f"PostgreSQL does not know the time zone {str(zone)!r}") from exc
    if found != expected:
        raise TextUnavailable(
            f"PostgreSQL's offsets of the time zone {str(zone)!r} differ from Python's"
        )
    _AGREED_ZONES.add((using, sql))
    return sql, offsets


#: Session settings :func:`text_select`'s spellings rely on, local to the transaction.
SESSION_SQL = (
    "SELECT set_config('TimeZone', %s, true), "
    "set_config('DateStyle', 'ISO, MDY', true), "
    "set_config('extra_float_digits', '1', true), "
    # JIT compiles the per-column expressions of a large export before its first row:
    # 0.6 s at 10M rows, for no gain in throughput here.
    "set_config('jit', 'off', true), "
    # One backend per export, as a cursor gets anyway (PostgreSQL never runs a cursor's
    # query in parallel): parallel workers take the cores the web worker needs to send
    # the rows (COPY mode was ~15% slower with them on 2 cores).
    "set_config('max_parallel_workers_per_gather', '0', true)"
)


def prepare_session(connection: Any) -> None:
    """Set the session's time zone (the connection's), ``DateStyle`` ISO, shortest exact
    floats, no JIT and no parallel workers until the end of the current transaction."""
    with connection.cursor() as cursor:
        cursor.execute(SESSION_SQL, [connection.timezone_name])
