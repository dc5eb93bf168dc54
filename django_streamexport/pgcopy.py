"""CSV through PostgreSQL ``COPY ... TO STDOUT``: the same file, produced by the server.

:class:`CopyExportStream` replaces the body of a CSV export (not its header,
which the format still writes) with the output of::

    COPY (SELECT <one expression per column> FROM (<the queryset's SQL>) AS se(c0, ...))
    TO STDOUT WITH (FORMAT csv, HEADER false, DELIMITER ',')

The ``SELECT`` is :func:`~django_streamexport.pgtext.text_select`'s: every value spelled
in SQL exactly as :class:`~django_streamexport.formats.csv.CSVFormat` spells it in
Python, so the two paths give the same bytes (``tests/test_pgcopy.py``).  Each row's line
end ``\\n`` becomes ``\\r\\n`` (COPY cannot write CRLF; PostgreSQL sends one ``CopyData``
message per row, so the last byte of each block is the row's terminator).

What COPY cannot give makes the export fall back to the standard path (same output,
slower) with a log line, or, with ``copy_mode="require"``, raise ``ImproperlyConfigured``
before the response starts: what :func:`~django_streamexport.pgtext.text_select` refuses
(another format or converters, JSON and other columns PostgreSQL spells differently,
values Django converts after reading, another database), a one-column export (Python
writes ``""`` for an empty single-field row), a row limit, and the psycopg2 driver:
psycopg2 cannot run COPY under a gevent wait callback (``copy_expert cannot be used with
an asynchronous callback``), psycopg 3 streams it block by block and cooperates with
gevent.

Known spelling difference: a text value that is exactly ``\\.`` is quoted by COPY and not
by Python; a CSV reader parses both to the same value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction

from django_streamexport.formats.csv import CSVFormat
from django_streamexport.pgtext import TextUnavailable, prepare_session, text_select
from django_streamexport.streaming import ExportStream

logger = logging.getLogger("django_streamexport")

#: ``copy_mode`` values: off, on with fall-back, on or refuse.
COPY_MODES = (False, True, "require")


class CopyModeUnavailable(TextUnavailable):
    """The export cannot be produced by ``COPY``; the message says why."""


def copy_sql(stream: ExportStream) -> tuple[str, list[Any]]:
    """Return the ``COPY ... TO STDOUT`` statement and parameters for ``stream``'s rows.

    Raises :class:`~django_streamexport.pgtext.TextUnavailable` (or its subclass
    :class:`CopyModeUnavailable`) naming the reason when COPY cannot give the same output
    as the standard path.
    """
    if len(stream.columns) < 2:
        raise CopyModeUnavailable("a one-column CSV spells empty rows differently")
    if stream.max_rows is not None:
        # COPY hands over whole blocks; the standard path stops at exactly max_rows.
        raise CopyModeUnavailable("a row limit is set (max_rows)")
    select, params = text_select(stream, typed=True)
    try:
        import psycopg  # noqa: F401
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        is_psycopg3 = False
    if not is_psycopg3:
        raise CopyModeUnavailable(
            "Django uses psycopg2, which cannot stream COPY under gevent; install psycopg 3"
        )
    export_format = stream.format
    assert isinstance(export_format, CSVFormat)  # text_select() refuses other formats
    delimiter = export_format.delimiter.replace("'", "''")
    statement = (
        f"COPY ({select})"
        f" TO STDOUT WITH (FORMAT csv, HEADER false, DELIMITER '{delimiter}', QUOTE '\"')"
    )
    return statement, params


class CopyExportStream(ExportStream):
    """An :class:`ExportStream` whose CSV body comes from PostgreSQL ``COPY ... TO STDOUT``.

    ``copy_mode`` is ``True`` (use COPY when it can give the same output, else fall back to
    the standard path and log why, at INFO) or ``"require"`` (raise
    ``ImproperlyConfigured`` at construction, before any response starts, when it cannot).
    ``copy_reason`` holds the fall-back reason, or ``None`` when COPY is used.

    COPY runs in a transaction with the session settings of
    :func:`~django_streamexport.pgtext.prepare_session` (the connection's time zone,
    ``DateStyle`` ISO, no JIT, no parallel workers); its blocks (one per row) are collected
    into chunks of about ``buffer_size`` bytes.  Closing the stream early (client
    disconnect) leaves the COPY, which rolls the transaction back.
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
        except TextUnavailable as exc:
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
            prepare_session(connection)
            with connection.cursor() as cursor:
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
