"""Read a server-side cursor with the next ``FETCH`` already running (psycopg 3).

A cursor export alternates: Python waits while PostgreSQL computes a batch of rows, then
PostgreSQL waits while Python renders it.  :func:`prefetching_batches` sends the next
``FETCH`` before it hands a batch over, so PostgreSQL computes batch *n + 1* while the
export renders batch *n*, on another core (benchmark: 1M rows through gunicorn, CSV
4.6 s -> 3.0 s, NDJSON 3.6 s -> 3.0 s; see docs/performance.md).

It declares its own ``NO SCROLL ... WITHOUT HOLD`` cursor (what Django's chunked cursor
declares inside a transaction), sends ``FETCH FORWARD n`` with libpq
(``PGconn.send_query()``), waits the way psycopg waits (gevent-aware) and loads the rows
with psycopg's ``Transformer`` from the export cursor's adapters, so values are what the
cursor would give, a slice at a time as the export renders them (:class:`FetchedRows`).
At most one ``FETCH`` is in flight; closing the generator early (a
client disconnect) or an error takes its result before returning, so the connection is
idle again when the export's transaction ends.

:func:`prefetch_available` says whether the driver has what it needs (psycopg 3 with
``psycopg.generators.send``/``fetch_many`` and ``psycopg.adapt.Transformer``); the export
reads with Django's cursor and ``fetchmany()`` otherwise (psycopg2, other psycopg
versions).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, overload

from django_streamexport.postgresql.driver import psycopg_internals
from django_streamexport.postgresql.guards import IdleWatch, idle_timeout_error

__all__ = ["FetchedRows", "prefetch_available", "prefetching_batches"]

logger = logging.getLogger("django_streamexport")


def prefetch_available(connection: Any) -> bool:
    """Say whether :func:`prefetching_batches` can read from Django ``connection``.

    True on PostgreSQL when Django uses a psycopg 3 that has the pieces it needs
    (:func:`~django_streamexport.postgresql.driver.psycopg_internals`); the connection
    need not be open yet.
    """
    return connection.vendor == "postgresql" and psycopg_internals() is not None


class FetchedRows(Sequence[tuple]):
    """The rows of one ``FETCH`` result, loaded by psycopg's ``Transformer`` when sliced.

    Loading (turning PostgreSQL's text into Python values) is most of an export's work per
    ``FETCH``: done for the whole batch at once, 2000 rows of ten typed columns hold the
    worker for milliseconds.  Loaded a slice at a time, it falls within the slices the
    stream renders between its turns (:class:`~django_streamexport.streaming.TimeSlice`).
    ``rows[i:j]`` returns a list of tuples (``finish``, if given, applied to it: the
    export's post-processing, row by row); ``len()`` is the result's row count.  The result
    stays readable after the connection moved on: a ``PGresult`` is the client's copy.
    """

    __slots__ = ("_finish", "_result", "_size", "_transformer")

    def __init__(
        self,
        transformer: Any,
        result: Any,
        finish: Callable[[list[tuple]], list[tuple]] | None = None,
    ) -> None:
        self._transformer = transformer
        self._result = result
        self._size = result.ntuples
        self._finish = finish

    def then(self, finish: Callable[[list[tuple]], list[tuple]]) -> FetchedRows:
        """Return these rows with ``finish`` applied to every slice loaded (after any before)."""
        before = self._finish
        if before is None:
            return FetchedRows(self._transformer, self._result, finish)
        return FetchedRows(self._transformer, self._result, lambda rows: finish(before(rows)))

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> tuple: ...
    @overload
    def __getitem__(self, index: slice) -> list[tuple]: ...
    def __getitem__(self, index: int | slice) -> tuple | list[tuple]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._size)
            if step != 1:
                return self.load(0, self._size)[index]
            return self.load(start, max(start, stop))
        position = index + self._size if index < 0 else index
        if not 0 <= position < self._size:
            raise IndexError("row index out of range")
        return self.load(position, position + 1)[0]

    def load(self, start: int, stop: int) -> list[tuple]:
        """Return rows ``start`` to ``stop`` (excluded) as tuples, finished."""
        transformer = self._transformer
        if transformer.pgresult is not self._result:
            transformer.set_pgresult(self._result)
        rows = transformer.load_rows(start, stop, tuple)
        return rows if self._finish is None else self._finish(rows)


def prefetching_batches(
    cursor: Any,
    sql: str,
    params: Any,
    sizes: Callable[[], int],
    *,
    idle_timeout: float | None = None,
    driver: Any = None,
) -> Iterator[FetchedRows]:
    """Yield the rows of ``sql`` in batches of ``sizes()`` rows, the next batch in flight.

    ``cursor`` is a Django cursor of the export's connection, inside its transaction;
    ``sql`` and ``params`` are the export's query (``%s`` placeholders).  Yields
    :class:`FetchedRows`, sequences of tuples as psycopg loads them (before Django's
    converters), loaded when sliced.  Raises the server's error,
    as Django's ``django.db`` exceptions, when a ``FETCH`` fails.

    ``driver`` is :func:`~django_streamexport.postgresql.driver.psycopg_internals`'s
    namespace, as it was when the reader was chosen (default: looked up now).

    ``idle_timeout`` is the session's ``idle_in_transaction_session_timeout`` in seconds
    (``None``: no bound), and it bounds how long the consumer may keep a batch.  While it
    does, the next ``FETCH`` runs; when its result outgrows the socket buffers (wide rows,
    a large ``chunk_size``) PostgreSQL waits ``active``, writing it to a socket nobody
    reads, and its own timeout never applies.  So an
    :class:`~django_streamexport.postgresql.guards.IdleWatch` ends the session when the
    consumer has been away for ``idle_timeout`` seconds, and the generator raises the
    25P03 error when it is resumed.  When the result fits, the session goes idle and
    PostgreSQL may end it first; libpq, having read the batch, then meets the closed socket
    before it parses the reason, so the error says only that the connection was lost: when
    no ``FETCH`` was sent for at least ``idle_timeout`` seconds before it, it is reported
    as that timeout.  Either way the client is told ``idle_timeout``, as on the other path.
    """
    driver = driver or psycopg_internals()
    assert driver is not None  # prefetch_available() was asked
    send, fetch_many, transformer_class = driver.send, driver.fetch_many, driver.Transformer
    errors, pq = driver.errors, driver.pq
    raw = cursor.cursor  # psycopg's cursor under Django's wrapper: its adapters load rows
    connection = raw.connection
    pgconn = connection.pgconn
    name = f"streamexport_{uuid.uuid4().hex}"
    cursor.execute(f"DECLARE {name} NO SCROLL CURSOR WITHOUT HOLD FOR {sql}", params)
    transformer = transformer_class(raw)
    tuples_ok = pq.ExecStatus.TUPLES_OK
    in_flight = False

    wrap_errors = cursor.db.wrap_database_errors
    # When the last two FETCHes were sent: the server sat idle in between, after the
    # first one's rows were computed, for at most their gap.
    sent_at = [time.monotonic()] * 2

    @contextmanager
    def driver_errors() -> Iterator[None]:
        # Django's wrapper outside: driver errors become django.db errors (as from a
        # cursor), and a broken connection is marked so that Django closes it.
        with wrap_errors:
            try:
                yield
            except errors.OperationalError as exc:
                idle = max(sent_at[1] - sent_at[0], time.monotonic() - sent_at[1])
                if idle_timeout and exc.sqlstate is None and idle >= idle_timeout:
                    raise errors.OperationalError(
                        "terminating connection due to idle-in-transaction timeout"
                        f" (no FETCH for {idle:.1f} s): {exc}"
                    ) from exc
                raise

    def request(rows: int) -> None:
        nonlocal in_flight
        sent_at[:] = [sent_at[1], time.monotonic()]
        with driver_errors():
            pgconn.send_query(f"FETCH FORWARD {rows:d} FROM {name}".encode())
            in_flight = True
            connection.wait(send(pgconn))

    def receive() -> FetchedRows:
        nonlocal in_flight
        with driver_errors():
            results = connection.wait(fetch_many(pgconn))
            in_flight = False
            result = results[0] if results else None
            if result is None or result.status != tuples_ok:
                if result is not None and result.status == pq.ExecStatus.FATAL_ERROR:
                    raise errors.error_from_result(result, encoding=connection.info.encoding)
                raise errors.InternalError(f"unexpected FETCH result: {result!r}")
            return FetchedRows(transformer, result)

    watch = IdleWatch(idle_timeout, pgconn.finish, idle_timeout_error)
    try:
        with watch:
            request(sizes())
            while rows := receive():
                request(sizes())  # computed by PostgreSQL while the export renders these
                watch.away()
                yield rows
                with driver_errors():
                    watch.back()
    finally:
        if in_flight and not connection.closed:
            # Closed early or failed between request and receive: take the result so the
            # connection is idle for the rollback (unless the watch has closed it).
            try:
                receive()
            except Exception as exc:
                # The export already ends with its own error (or was closed); this one
                # only says the FETCH in flight failed too, so it is logged, not raised.
                logger.debug("Prefetched FETCH from %s failed while closing: %s", name, exc)
