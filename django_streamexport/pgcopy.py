"""CSV through PostgreSQL ``COPY ... TO STDOUT``: the same file, produced by the server.

:class:`CopyExportStream` replaces the body of a CSV export (not its header,
which the format still writes) with the output of::

    COPY (SELECT <one expression per column> FROM (<the queryset's SQL>) AS se(c0, ...))
    TO STDOUT WITH (FORMAT csv, HEADER false, DELIMITER ',')

Every value is spelled in SQL exactly as :class:`~django_streamexport.formats.csv.CSVFormat`
spells it in Python, so the two paths give the same bytes (``tests/test_pgcopy.py``):

* text: as stored, with the ``'`` formula-escaping prefix decided in SQL (the first code
  point, ``ascii(c)``, is one of ``= + - @``, tab, CR, LF; PostgreSQL text cannot hold NUL);
  the empty string is written as NULL, because COPY quotes ``""`` and Python's ``csv`` does not;
* booleans ``true``/``false``; integers, decimals, dates and UUIDs as COPY prints them
  (decimals exact, the scale kept, as ``format(Decimal, "f")``); floats spelled as
  Python's ``repr()`` (``100.0``, ``inf``, ``nan``, no exponent below 1e16);
* datetimes ``to_char`` ISO 8601 with ``T``, microseconds only when non-zero (as
  ``isoformat()``) and the offset ``+00:00`` of the session time zone, which is set to the
  connection's (``UTC`` under ``USE_TZ``) for the export transaction; times likewise;
  durations as ``duration_iso_string()``; binary data base64;
* choices display labels through ``CASE``;
* each row's line end ``\\n`` becomes ``\\r\\n`` (COPY cannot write CRLF; PostgreSQL sends one
  ``CopyData`` message per row, so the last byte of each block is the row's terminator).

What SQL cannot express makes the export fall back to the standard path (same output,
slower) with a log line, or, with ``copy_mode="require"``, raise ``ImproperlyConfigured``
before the response starts: a format other than :class:`CSVFormat` or one with a custom
converter, JSON and other columns whose text form PostgreSQL spells differently (``jsonb``
puts spaces after ``:`` and ``,``), a one-column export (Python writes ``""`` for an empty
single-field row), another database than PostgreSQL, and the psycopg2 driver: psycopg2
cannot run COPY under a gevent wait callback (``copy_expert cannot be used with an
asynchronous callback``), psycopg 3 streams it block by block and cooperates with gevent.

Known spelling difference: a text value that is exactly ``\\.`` is quoted by COPY and not by
Python; a CSV reader parses both to the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connections, transaction

from django_streamexport import columns as kinds
from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.csv import FORMULA_TRIGGERS, CSVFormat, escape_formula
from django_streamexport.streaming import ExportStream

logger = logging.getLogger("django_streamexport")

#: ``copy_mode`` values: off, on with fall-back, on or refuse.
COPY_MODES = (False, True, "require")

#: Code points of the formula triggers.  All are below 65 ("A"), so most text skips the
#: check; NUL cannot occur in PostgreSQL text, and ``ascii('')`` is 0.
_TRIGGER_CODES = ", ".join(str(ord(t)) for t in FORMULA_TRIGGERS if t != "\0")
assert all(ord(t) < 65 for t in FORMULA_TRIGGERS)


class CopyModeUnavailable(Exception):
    """The export cannot be produced by ``COPY``; the message says why."""


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
    # days, hours, minutes, seconds and (only when non-zero) microseconds.
    us = f"(extract(epoch FROM {c}) * 1000000)::bigint"
    a = f"abs({us})"
    return (
        f"((CASE WHEN {us} < 0 THEN '-' ELSE '' END) || 'P' || ({a} / 86400000000)::text || 'DT'"
        f" || lpad((({a} / 3600000000) %% 24)::text, 2, '0') || 'H'"
        f" || lpad((({a} / 60000000) %% 60)::text, 2, '0') || 'M'"
        f" || lpad((({a} / 1000000) %% 60)::text, 2, '0')"
        f" || (CASE WHEN {a} %% 1000000 <> 0 THEN '.' || lpad(({a} %% 1000000)::text, 6, '0')"
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


def _time_sql(c: str) -> str:
    ts = f"('2000-01-01'::date + {c})"
    return f"replace(replace(to_char({ts}, 'HH24:MI:SS.US|'), '.000000|', ''), '|', '')"


_SQL_BY_KIND = {
    # COPY writes these with the type's output function, as ::text would spell them.
    kinds.INTEGER: lambda c: c,
    kinds.DECIMAL: lambda c: c,
    kinds.FLOAT: _float_sql,
    kinds.BOOLEAN: lambda c: f"(CASE WHEN {c} THEN 'true' WHEN NOT {c} THEN 'false' END)",
    kinds.DATE: lambda c: c,  # DateStyle ISO is set for the export
    kinds.TIME: _time_sql,
    kinds.DURATION: _duration_sql,
    kinds.UUID: lambda c: c,
    kinds.BINARY: lambda c: f"translate(encode({c}, 'base64'), E'\\n', '')",
}


def _value_sql(kind: str, ref: str, *, escape: bool, utc: bool) -> str | None:
    """Return the SQL text expression for a ``kind`` value, or ``None`` if SQL cannot spell it."""
    if kind == kinds.TEXT:
        return _text_sql(ref, escape=escape)
    if kind == kinds.DATETIME:
        sql = _datetime_sql(ref, utc=utc)
    elif (expression := _SQL_BY_KIND.get(kind)) is not None:
        sql = expression(ref)
    else:
        return None
    return _escaped(f"({sql})::text") if escape else sql


def column_sql(
    column: ResolvedColumn, ref: str, export_format: CSVFormat, *, utc: bool = False
) -> tuple[str, list[Any]]:
    """Return the SQL text expression (and its parameters) that spells ``column`` as CSV does.

    ``ref`` is the column's reference in the outer query; ``utc`` says the session time
    zone is UTC (a cheaper datetime expression).  Raises :class:`CopyModeUnavailable` for
    a kind whose spelling SQL cannot reproduce.
    """
    escape = column.escape_formulas
    if escape is None:
        escape = export_format.escape_formulas and column.kind == kinds.TEXT
    if column.choices is not None:
        # CASE over the choices, labels escaped here as the converter would; values not
        # among the choices are written as stored (escaped only when stored as text).
        field = column.model_field
        stored_kind = kinds.kind_of_field(field) if field is not None else kinds.OTHER
        other = _value_sql(stored_kind, ref, escape=escape and stored_kind == kinds.TEXT, utc=utc)
        if other is None:
            raise CopyModeUnavailable(f"column {column.name!r} stores {stored_kind} values")
        params: list[Any] = []
        whens = []
        for value, label in column.choices.items():
            text = label if label != "" else None
            if escape and text is not None:
                text = escape_formula(text)
            whens.append("WHEN %s THEN %s")
            params += [value, text]
        return f"(CASE {ref} {' '.join(whens)} ELSE {other} END)", params
    sql = _value_sql(column.kind, ref, escape=escape, utc=utc)
    if sql is None:
        raise CopyModeUnavailable(
            f"column {column.name!r} holds {column.kind} values, which PostgreSQL spells "
            "differently from the CSV format"
        )
    return sql, []


def copy_sql(stream: ExportStream) -> tuple[str, list[Any]]:
    """Return the ``COPY ... TO STDOUT`` statement and parameters for ``stream``'s rows.

    Raises :class:`CopyModeUnavailable` naming the reason when COPY cannot give the same
    output as the standard path.
    """
    export_format = stream.format
    if not isinstance(export_format, CSVFormat):
        raise CopyModeUnavailable(f"the format is {export_format.format!r}, not CSV")
    cls = type(export_format)
    for hook in ("get_converter", "get_batch_converter", "convert_rows", "render_rows"):
        if getattr(cls, hook) is not getattr(CSVFormat, hook):
            raise CopyModeUnavailable(f"{cls.__name__} overrides {hook}()")
    if cls.batch_converters is not CSVFormat.batch_converters:
        raise CopyModeUnavailable(f"{cls.__name__} overrides batch_converters")
    if len(stream.columns) < 2:
        raise CopyModeUnavailable("a one-column CSV spells empty rows differently")
    if stream.max_rows is not None:
        # COPY hands over whole blocks; the standard path stops at exactly max_rows.
        raise CopyModeUnavailable("a row limit is set (max_rows)")
    connection = connections[stream.using]
    if connection.vendor != "postgresql":
        raise CopyModeUnavailable(f"database {stream.using!r} is {connection.vendor}")
    try:
        import psycopg  # noqa: F401
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        is_psycopg3 = False
    if not is_psycopg3:
        raise CopyModeUnavailable(
            "Django uses psycopg2, which cannot stream COPY under gevent; install psycopg 3"
        )
    queryset = stream.queryset.using(stream.using).values_list(
        *(column.lookup for column in stream.columns)
    )
    if queryset._prefetch_related_lookups:
        raise CopyModeUnavailable("the queryset uses prefetch_related()")
    try:
        inner, inner_params = queryset.query.get_compiler(using=stream.using).as_sql()
    except EmptyResultSet as exc:
        raise CopyModeUnavailable("the queryset can match no rows") from exc
    names = [f"c{index}" for index in range(len(stream.columns))]
    # The export's session time zone (set in iter_body()); "+00:00" is a constant in UTC.
    utc = connection.timezone_name.upper() in ("UTC", "ETC/UTC")
    expressions: list[str] = []
    params: list[Any] = []
    for name, column in zip(names, stream.columns):  # noqa: B905 (same length)
        sql, column_params = column_sql(column, f"se.{name}", export_format, utc=utc)
        expressions.append(sql)
        params += column_params
    delimiter = export_format.delimiter.replace("'", "''")
    statement = (
        f"COPY (SELECT {', '.join(expressions)} FROM ({inner}) AS se({', '.join(names)}))"
        f" TO STDOUT WITH (FORMAT csv, HEADER false, DELIMITER '{delimiter}', QUOTE '\"')"
    )
    return statement, params + list(inner_params)


class CopyExportStream(ExportStream):
    """An :class:`ExportStream` whose CSV body comes from PostgreSQL ``COPY ... TO STDOUT``.

    ``copy_mode`` is ``True`` (use COPY when it can give the same output, else fall back to
    the standard path and log why, at INFO) or ``"require"`` (raise
    ``ImproperlyConfigured`` at construction, before any response starts, when it cannot).
    ``copy_reason`` holds the fall-back reason, or ``None`` when COPY is used.

    COPY runs in a transaction whose ``TimeZone`` is the connection's (UTC under
    ``USE_TZ``), ``DateStyle`` ISO, ``extra_float_digits`` 1 (shortest exact floats),
    ``jit`` off (compiling delays the first row by the better part of a second) and
    ``max_parallel_workers_per_gather`` 0: one backend per export, as a cursor export
    gets (PostgreSQL never runs a cursor in parallel), because parallel workers take the
    cores the web worker needs to send the rows (on 2 cores they made COPY mode ~15%
    slower).  Its blocks (one per row) are collected into chunks of about
    ``buffer_size`` bytes.  Closing the stream
    early (client disconnect) leaves the COPY, which rolls the transaction back.
    """

    def __init__(self, *args: Any, copy_mode: bool | str = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if copy_mode not in COPY_MODES:
            raise ImproperlyConfigured(
                f"copy_mode must be one of {COPY_MODES!r}, not {copy_mode!r}."
            )
        self.copy_reason: str | None = None
        self._copy: tuple[str, list[Any]] | None = None
        if not copy_mode:
            self.copy_reason = "copy_mode is off"
            return
        try:
            self._copy = copy_sql(self)
        except CopyModeUnavailable as exc:
            self.copy_reason = str(exc)
            if copy_mode == "require":
                raise ImproperlyConfigured(
                    f"COPY mode was required but cannot be used for this export: {exc}. "
                    "Set copy_mode=True to fall back to the standard path."
                ) from exc
            logger.info(
                "Export %s: COPY mode falls back to the standard path: %s.",
                self.export_id,
                exc,
            )

    def iter_body(self) -> Iterator[bytes]:
        """Yield the COPY output in chunks of about ``buffer_size`` bytes (CRLF line ends)."""
        if self._copy is None:
            yield from super().iter_body()
            return
        statement, params = self._copy
        connection = connections[self.using]
        buffer_size = self.buffer_size
        with transaction.atomic(using=self.using):
            # COPY is one statement: statement_timeout bounds the whole export here,
            # not each fetch as on the standard path.
            self.apply_guards()
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT set_config('TimeZone', %s, true), "
                    "set_config('DateStyle', 'ISO, MDY', true), "
                    "set_config('extra_float_digits', '1', true), "
                    # JIT compiles the per-column expressions of a large COPY before its
                    # first row: 0.6 s at 10M rows, for no gain in throughput here.
                    "set_config('jit', 'off', true), "
                    # One backend, as a cursor export (see the class docstring).
                    "set_config('max_parallel_workers_per_gather', '0', true)",
                    [connection.timezone_name],
                )
                raw = cursor.cursor  # the psycopg 3 cursor under Django's wrapper
                with raw.copy(statement, params) as copy:
                    read = _block_reader(raw.connection, copy)
                    limit = 1  # the first chunk holds one row, so it leaves at once
                    while blocks := read(limit):
                        limit = buffer_size
                        data = _crlf_rows(blocks)
                        self.rows += len(blocks)
                        self.bytes += len(data)
                        yield data


def _block_reader(connection: Any, copy: Any) -> Callable[[int], list]:
    """Return ``read(limit)``: the next COPY blocks (rows) worth about ``limit`` bytes, or ``[]``.

    psycopg's ``Copy.read()`` returns one row per call, each through a full wait cycle
    (``Connection.wait()``) and two generators, which costs more than the rest of COPY mode
    together.  Here one wait cycle takes rows straight from libpq
    (``PGconn.get_copy_data()``) until ``limit`` bytes are in, waits for the socket the
    way psycopg does (gevent-aware), and ends the COPY as psycopg's ``copy_from``
    generator does (raising the server's error, such as a statement timeout).  Falls back
    to ``read()`` per row where those pieces are missing (other psycopg versions).
    """
    try:
        from psycopg import errors, generators, pq
        from psycopg.waiting import Wait

        fetch_many = generators.fetch_many
        error_from_result = errors.error_from_result
        pgconn = connection.pgconn
        get_copy_data = pgconn.get_copy_data
        wait = connection.wait
        copy._finished  # noqa: B018 (set below, when the COPY has ended)
    except (ImportError, AttributeError):

        def read_each(limit: int) -> list:
            blocks, size = [], 0
            while size < limit and (block := copy.read()):
                blocks.append(block)
                size += len(block)
            return blocks

        return read_each

    command_ok = pq.ExecStatus.COMMAND_OK
    wait_r = Wait.R

    def gather(limit: int) -> Any:
        blocks: list = []
        append = blocks.append
        size = 0
        read_socket = False  # the last call found libpq's buffer empty and read the socket
        while size < limit:
            nbytes, block = get_copy_data(1)  # 1: never block
            if nbytes > 0:
                append(block)
                size += nbytes
                read_socket = False
            elif nbytes == 0:
                # No whole row buffered.  libpq reads at most its buffer (16 KiB) per
                # consume_input(), so read the socket once more before waiting: a wait is
                # a trip through gevent's hub, and waiting every 16 KiB cost ~15% of COPY
                # mode's time.  consume_input() never blocks.
                if read_socket:
                    while not (yield wait_r):
                        continue
                pgconn.consume_input()
                read_socket = True
            else:  # -1: the COPY has ended; take its result (an error if it failed)
                results = yield from fetch_many(pgconn)
                copy._finished = True
                if len(results) != 1:
                    raise errors.ProgrammingError("COPY ended with several results")
                if results[0].status != command_ok:
                    raise error_from_result(results[0], encoding=connection.info.encoding)
                break
        return blocks

    def read(limit: int) -> list:
        return [] if copy._finished else wait(gather(limit))

    return read


def _crlf_rows(blocks: list) -> bytes:
    """Return COPY's row blocks as one ``bytes`` with each row's ``\\n`` made ``\\r\\n``.

    One block per row, its last byte the row's ``\\n``.  When the chunk has no other
    ``\\n`` (no line break inside a quoted value), one ``replace()`` over the joined
    chunk does it; otherwise each row is cut and joined.
    """
    data = b"".join(blocks)
    if data.count(b"\n") == len(blocks):
        return data.replace(b"\n", b"\r\n")
    return b"\r\n".join([bytes(block[:-1]) for block in blocks]) + b"\r\n"
