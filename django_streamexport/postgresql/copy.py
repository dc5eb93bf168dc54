"""CSV through PostgreSQL ``COPY ... TO STDOUT``: the same file, produced by the server.

:class:`~django_streamexport.readers.copy.CopyReader` replaces the body of a CSV export
(not its header, which the format still writes) with the output of::

    COPY (SELECT <one expression per column> FROM (<the queryset's SQL>) AS se(c0, ...))
    TO STDOUT WITH (FORMAT csv, HEADER false, DELIMITER ',')

The ``SELECT`` is :func:`~django_streamexport.postgresql.text.text_select`'s: every value spelled
in SQL exactly as :class:`~django_streamexport.formats.csv.CSVFormat` spells it in
Python, so the two paths give the same bytes (``tests/test_postgresql_copy.py``).  Each row's line
end ``\\n`` becomes ``\\r\\n`` (COPY cannot write CRLF; PostgreSQL sends one ``CopyData``
message per row, so the last byte of each block is the row's terminator).

COPY is the default for CSV (``copy_mode=True``, ``STREAMEXPORT_COPY_MODE``).  What COPY
cannot give makes the export fall back to the cursor path (same output, slower), the
reason in ``stream.reader.reason`` and a log line, or, with ``copy_mode="require"``, raise
``ImproperlyConfigured`` before the response starts: what
:func:`~django_streamexport.postgresql.text.text_select` refuses (another format or
converters, JSON and other columns PostgreSQL spells differently, values Django converts
after reading, another database), a format that writes another charset than UTF-8, and the
psycopg2 driver: psycopg2 cannot run COPY under a gevent wait callback (``copy_expert
cannot be used with an asynchronous callback``), psycopg 3 streams it block by block and
cooperates with gevent.

A row limit (``max_rows``) is read as ``LIMIT max_rows + 1``: the reader sends exactly
``max_rows`` rows (one ``CopyData`` message per row: PostgreSQL docs, "Frontend/Backend
Protocol", "COPY Operations") and, when the extra row came, the export fails with
``row_limit`` as on the cursor path.  A one-column export spells an empty cell ``""``, as
Python's ``csv`` does for a row of one empty field.

Known spelling differences, each parsed by a CSV reader to the same value: a text value
that is exactly ``\\.`` is quoted by COPY and not by Python; a float of 1e16 or more whose
shortest round-trip spelling PostgreSQL and Python choose differently
(``5.4636814749355824e+16`` from PostgreSQL, ``5.463681474935582e+16`` from ``repr()``;
both are the same double).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django_streamexport.postgresql.driver import is_psycopg3, psycopg_internals
from django_streamexport.postgresql.text import TextUnavailable, text_select

if TYPE_CHECKING:
    from django_streamexport.columns import CompiledQuery
    from django_streamexport.plan import ExportPlan

__all__ = ["CopyModeUnavailable", "block_reader", "copy_statement", "crlf_rows"]


class CopyModeUnavailable(TextUnavailable):
    """The export cannot be produced by ``COPY``; the message says why."""


def copy_statement(plan: ExportPlan, query: CompiledQuery) -> tuple[str, list[Any]]:
    """Return the ``COPY ... TO STDOUT`` statement and parameters for ``plan``'s rows.

    ``query`` is the export's compiled ``values_list()`` query; the statement is for
    psycopg's ``Cursor.copy()`` (``%s`` placeholders when there are parameters, none and no
    ``%%`` escapes otherwise).  With ``plan.max_rows``
    the ``SELECT`` ends with ``LIMIT max_rows + 1``: the reader sends ``max_rows`` rows
    and the one more says the limit was passed.  Raises
    :class:`~django_streamexport.postgresql.text.TextUnavailable` (or its subclass
    :class:`CopyModeUnavailable`) naming the reason when COPY cannot give the same
    output as the cursor path.
    """
    export_format = plan.format
    charset = getattr(export_format, "charset", None) or ""
    one_column = len(plan.columns) == 1
    # One column: text throughout, so that COALESCE() below can make every empty cell ''.
    select, params = text_select(plan, query, typed=not one_column)
    if not is_psycopg3():
        raise CopyModeUnavailable(
            "Django uses psycopg2, which cannot stream COPY under gevent; install psycopg 3"
        )
    if _codec_name(charset) != "utf-8":
        # COPY writes the client encoding, which Django sets to UTF8.
        raise CopyModeUnavailable(f"the format writes {charset!r}, COPY writes UTF-8")
    if one_column:
        # Python's csv writes a row of one empty field as "" (a bare line end would be an
        # empty line), and so does COPY for an empty string that is not NULL: "a non-NULL
        # value matching the NULL parameter string is quoted" (PostgreSQL docs, COPY, "CSV
        # Format").  NULL and '' both become ''.
        select = f"SELECT COALESCE(se1.v, '') FROM ({select}) AS se1(v)"
    if plan.max_rows is not None:
        select += f" LIMIT {int(plan.max_rows) + 1:d}"
    delimiter = export_format.delimiter.replace("'", "''")  # type: ignore[attr-defined]  # CSV
    statement = (
        f"COPY ({select})"
        f" TO STDOUT WITH (FORMAT csv, HEADER false, DELIMITER '{delimiter}', QUOTE '\"')"
    )
    if not params:
        # Django's SQL escapes a literal "%" as "%%" whatever its parameters; psycopg's
        # copy() merges parameters (and so unescapes) only when there are some
        # (psycopg/_cursor_base.py, _start_copy_gen), where execute() always does.
        statement = statement.replace("%%", "%")
    return statement, params


def _codec_name(charset: str) -> str:
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return charset


def block_reader(connection: Any, copy: Any) -> Callable[[int], tuple[bytearray, list[int]]]:
    """Return ``read(limit)``: the next COPY rows worth about ``limit`` bytes, as
    ``(data, ends)``: the rows' bytes one after another, and the offset in ``data`` where
    each row ends (after its ``\\n``); ``ends`` is empty when the COPY has ended.

    psycopg's ``Copy.read()`` returns one row per call, each through a full wait cycle
    (``Connection.wait()``) and two generators, which costs more than the rest of COPY mode
    together.  Here one wait cycle takes rows straight from libpq
    (``PGconn.get_copy_data()``) until ``limit`` bytes are in, waits for the socket the
    way psycopg does (gevent-aware), and ends the COPY as psycopg's ``copy_from``
    generator does (raising the server's error, such as a statement timeout).  Falls back
    to ``read()`` per row where those pieces are missing (other psycopg versions).

    Each row is copied into ``data`` at once and its block dropped: a block is a
    ``memoryview``, which the garbage collector tracks, and holding a chunk's worth of
    them (hundreds per chunk, a million per million rows) set off collections of every
    generation, the whole process's objects included; the offsets are ``int``, which it
    does not track.
    """
    driver = psycopg_internals()
    try:
        if driver is None:
            raise AttributeError("psycopg internals")
        pgconn = connection.pgconn
        get_copy_data = pgconn.get_copy_data
        wait = connection.wait
        copy._finished  # noqa: B018 (set below, when the COPY has ended)
    except AttributeError:

        def read_each(limit: int) -> tuple[bytearray, list[int]]:
            data, ends = bytearray(), []
            while len(data) < limit and (block := copy.read()):
                data += block
                ends.append(len(data))
            return data, ends

        return read_each

    errors, pq, fetch_many = driver.errors, driver.pq, driver.fetch_many
    error_from_result = errors.error_from_result
    command_ok = pq.ExecStatus.COMMAND_OK
    wait_r = driver.Wait.R

    def gather(limit: int) -> Any:
        data = bytearray()
        ends: list[int] = []
        end = ends.append
        size = 0
        read_socket = False  # the last call found libpq's buffer empty and read the socket
        while size < limit:
            nbytes, block = get_copy_data(1)  # 1: never block
            if nbytes > 0:
                data += block
                size += nbytes
                end(size)
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
        return data, ends

    def read(limit: int) -> tuple[bytearray, list[int]]:
        return (bytearray(), []) if copy._finished else wait(gather(limit))

    return read


def crlf_rows(data: bytearray, ends: list[int]) -> bytes:
    """Return COPY's rows (``data``, each ending at an offset of ``ends``) as ``bytes`` with
    each row's ``\\n`` made ``\\r\\n``.

    Each row's last byte is its ``\\n``.  When ``data`` has no other ``\\n`` (no line
    break inside a quoted value), one ``replace()`` does it; otherwise each row is cut at
    its end and joined.
    """
    if data.count(b"\n") == len(ends):
        return bytes(data).replace(b"\n", b"\r\n")
    view, start, rows = memoryview(data), 0, []
    for stop in ends:
        rows.append(view[start : stop - 1])
        start = stop
    return b"\r\n".join(rows) + b"\r\n"
