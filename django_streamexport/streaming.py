"""The export's lifecycle: an iterable of ``bytes`` chunks that knows nothing about requests.

:class:`ExportStream` yields the format's opening bytes (a CSV header) *before* the query
runs, so a server sends the headers at once; then the body, read by the plan's reader
(:func:`~django_streamexport.readers.choose_reader`) and rendered in slices of about
``plan.buffer_size`` bytes (:func:`next_slice_rows`; never one row per chunk); then the
closing bytes.  It lets other requests run after each slice (:class:`TimeSlice`), and
splits a slice that would take longer than ``plan.time_slice``.  On completion, an
error and ``close()`` (a client disconnect; PEP 3333) the reader (its cursor, its
transaction) and the format are closed.  A failure after the first byte is logged,
answered with the format's ``error()`` bytes and re-raised, so the server aborts the
transfer (no clean end).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from django_streamexport.exceptions import FiltersRefused, RowLimitExceeded
from django_streamexport.failures import describe_failure, log_failure
from django_streamexport.plan import ExportPlan
from django_streamexport.readers import Reader, choose_reader
from django_streamexport.readers.base import FIRST_BATCH_ROWS
from django_streamexport.signals import export_started, send_export_finished

__all__ = ["MAX_SLICE_ROWS", "ExportStream", "TimeSlice", "next_slice_rows"]

logger = logging.getLogger("django_streamexport")

#: Upper bound on rows rendered per slice, whatever their size.
MAX_SLICE_ROWS = 20_000


def next_slice_rows(buffer_size: int, rows: int, nbytes: int) -> int:
    """Return rows to render next (1 to :data:`MAX_SLICE_ROWS`) for a ~``buffer_size`` chunk,
    given that ``rows`` rows made ``nbytes`` bytes last time."""
    return max(1, min(MAX_SLICE_ROWS, buffer_size * rows // max(1, nbytes)))


class TimeSlice:
    """Give other greenlets (or threads) a turn: after each step, and within ``seconds``.

    Under gevent a write that does not block never switches greenlets, so a stream that
    renders faster than its client reads would hold the worker's only thread.
    :meth:`turn` calls ``time.sleep(0)`` once gevent (or another library of green
    threads) has patched it: ``gevent.sleep(0)``, "a value of 0 (the default) means to
    yield execution to any other runnable greenlets" (gevent docs, ``gevent.sleep``).
    Unpatched, it does nothing: operating-system threads are switched by the interpreter
    every ``sys.getswitchinterval()`` (5 ms) anyway, and the system call of
    ``time.sleep(0)`` gave the core away to other processes on a busy machine (a third of
    an in-process COPY export's time on the benchmark machine while tests ran beside it).
    The stream takes a turn after each slice of rows, and splits work that would
    hold the worker longer than ``seconds`` (the plan's ``time_slice``) into parts with a
    turn after each; a request waiting on the worker then waits for at most
    ``seconds`` of each export before it.  :meth:`spend` turns only when ``seconds``
    have passed since the last turn (wall time: greenlets share one thread).  ``turns``
    counts the turns taken.
    """

    __slots__ = ("seconds", "since", "turns")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since = time.monotonic()
        self.turns = 0

    def turn(self) -> None:
        """Let the other greenlets that are ready run now (see the class)."""
        sleep = time.sleep
        if sleep.__module__ != "time":  # patched: a cooperative sleep
            sleep(0)
        self.turns += 1
        self.since = time.monotonic()

    def spend(self) -> None:
        """Take a turn if ``seconds`` have passed since the last one (or the start)."""
        if time.monotonic() - self.since >= self.seconds:
            self.turn()


class ExportStream:
    """Iterate once over the export of ``plan`` as ``bytes`` chunks of about ``buffer_size``.

    ``rows`` (data rows) and ``bytes`` (body bytes) grow as chunks are yielded;
    ``seconds`` is set at the end, ``outcome`` to ``"complete"``, ``"failed"``
    (``error_code``: a :mod:`~django_streamexport.failures` code), ``"disconnected"`` or
    ``"interrupted"``.  ``reader`` is chosen here by :meth:`get_reader`, so a plan that
    cannot be read fails before a response starts (``ImproperlyConfigured``, a compile
    error).  Sends :mod:`~django_streamexport.signals` as iteration starts and ends.
    """

    def __init__(self, plan: ExportPlan) -> None:
        self.plan = plan
        self.rows = self.bytes = 0
        self.seconds: float | None = None
        self.outcome: str | None = None  # then "running", then how it ended
        self.error_code: str | None = None
        self._iterator: Iterator[bytes] | None = None
        #: The turns the export gives other requests (``plan.time_slice``).
        self.time_slice = TimeSlice(plan.time_slice)
        self._closers: list[weakref.finalize] = []
        self.add_closer(plan.format.close)
        try:
            self.reader = self.get_reader()
        except FiltersRefused as exc:
            logger.info(
                "Export %s refused: the query compiler refused its filters: %s: %s",
                *(self.export_id, type(exc.__cause__).__name__, exc.__cause__),
            )
            raise
        logger.debug("Export %s reads with %r.", self.export_id, self.reader)

    export_id = property(lambda self: self.plan.export_id)
    format = property(lambda self: self.plan.format)
    using = property(lambda self: self.plan.using)

    def get_reader(self) -> Reader:
        """Return the reader of the rows; override to use your own.

        Default: :func:`~django_streamexport.readers.choose_reader`'s choice.
        """
        return choose_reader(self.plan)

    def __iter__(self) -> Iterator[bytes]:
        if self._iterator is not None:
            raise RuntimeError("An ExportStream can be iterated only once.")
        self._iterator = self._generate()
        return self._iterator

    def close(self) -> None:
        """Stop the export and release its reader and closers (idempotent)."""
        try:
            if self._iterator is not None:
                self._iterator.close()  # type: ignore[attr-defined]
        finally:
            self._run_closers()  # a generator closed before its first step runs no finally

    def add_closer(self, closer: Callable[[], None]) -> None:
        """Call ``closer()`` once when the export ends, fails, is closed or is collected."""
        self._closers.append(weakref.finalize(self, closer))

    def _run_closers(self) -> None:
        closers, self._closers = self._closers, []
        for finalizer in closers:
            try:
                finalizer()  # runs the closer unless it already ran; detaches it
            except Exception:
                logger.exception("Export %s: a closer failed.", self.export_id)

    def iter_body(self) -> Iterator[bytes]:
        """Yield the body (no header, no footer) in ~``buffer_size`` chunks; keep counters.

        Sends exactly ``max_rows`` rows, then raises
        :class:`~django_streamexport.exceptions.RowLimitExceeded` if there are more.

        Lets other requests run (:attr:`time_slice`) after each slice of rows, and within
        a slice that would take longer than ``plan.time_slice`` at the pace of the last
        one, when the format renders rows independently
        (:attr:`~django_streamexport.formats.base.ExportFormat.independent_rows`): the
        slice is then rendered in parts, turns given in between, and its chunk is the
        parts joined, so chunks and bytes are the same whatever the timing.  A batch that
        loads its rows as they are sliced
        (:class:`~django_streamexport.postgresql.prefetch.FetchedRows`) is loaded part by
        part too.
        """
        reader, fmt, plan = self.reader, self.format, self.plan
        limit, buffer, budget = plan.max_rows, plan.buffer_size, plan.time_slice
        turn, clock, splits = self.time_slice.turn, time.perf_counter, fmt.independent_rows
        parts = reader.read()
        try:
            if reader.renders:
                for data, rows in parts:
                    self.rows += rows
                    self.bytes += len(data)
                    yield data
                    turn()
                if reader.over_limit:  # it sent exactly max_rows rows and found more
                    raise RowLimitExceeded(limit)  # type: ignore[arg-type]
                return
            render = fmt.render_text_rows if reader.text_cells else fmt.render_rows
            rendered_size = fmt.rendered_size
            slice_rows, row_seconds = FIRST_BATCH_ROWS, 0.0
            for batch in parts:
                start, size = 0, len(batch)
                while start < size:
                    stop = min(size, start + slice_rows)
                    over = limit is not None and self.rows + stop - start > limit
                    if over:
                        stop = start + limit - self.rows  # type: ignore[operator]
                        if stop <= start:
                            raise RowLimitExceeded(limit)  # type: ignore[arg-type]
                    step = stop - start
                    if splits and row_seconds * step > budget:
                        step = max(1, int(budget / row_seconds))
                    pieces, nbytes, work = [], 0, 0.0
                    for first in range(start, stop, step):
                        if first > start:
                            turn()
                        began = clock()
                        piece = render(batch[first : min(first + step, stop)])
                        work += clock() - began
                        pieces.append(piece)
                        nbytes += rendered_size(piece)
                    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    rows, start = stop - start, stop
                    self.rows += rows
                    self.bytes += len(data)
                    if data:  # a compressing format may hold everything back
                        yield data
                    if over:
                        raise RowLimitExceeded(limit)  # type: ignore[arg-type]
                    slice_rows = next_slice_rows(buffer, rows, nbytes)
                    row_seconds = work / rows
                    turn()
        finally:
            parts.close()  # type: ignore[attr-defined]

    def signal_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments both export signals carry."""
        plan, fields = self.plan, [column.name for column in self.plan.columns]
        return dict(export_id=plan.export_id, user=plan.user, model=plan.model, fields=fields,
                    format=plan.format.format)  # fmt: skip

    def _generate(self) -> Iterator[bytes]:
        started = time.monotonic()
        fmt, limit = self.plan.format, self.plan.max_rows
        self.outcome = "running"
        try:
            export_started.send(sender=type(self), **self.signal_kwargs())
            head = fmt.start()
            self.bytes += len(head)
            yield head  # even when empty: the server sends the headers on the first chunk
            for chunk in self.iter_body():
                if limit is not None and self.rows > limit:  # a renders reader's backstop
                    raise RowLimitExceeded(limit)
                yield chunk
                self.time_slice.spend()  # where iter_body() is overridden and takes none
            tail = fmt.end(rows=self.rows)
            if tail:
                self.bytes += len(tail)
                yield tail
        except GeneratorExit:
            self.outcome = "disconnected"
            raise
        except Exception as exc:
            self.outcome = "failed"
            failure = describe_failure(exc)
            self.error_code = failure.code
            log_failure(self, failure, exc, time.monotonic() - started)
            error = fmt.error(failure.code, failure.message)
            if error:
                self.bytes += len(error)
                yield error
            raise  # the server aborts the transfer (PEP 3333): the cut is visible
        else:
            self.outcome = "complete"
        finally:
            self._finish(started)

    def _finish(self, started: float) -> None:
        self.seconds = time.monotonic() - started
        if self.outcome == "running":  # gevent.Timeout, GreenletExit, SystemExit: the server
            self.outcome = "interrupted"  # stopped the export, not the client
        if self.outcome != "failed":
            logger.info(
                "Export %s %s: %d rows, %d bytes, %.3f s.",
                *(self.export_id, self.outcome, self.rows, self.bytes, self.seconds),
            )
        try:
            send_export_finished(
                type(self),
                **{"rows": self.rows, "bytes": self.bytes, "seconds": self.seconds},
                **{"outcome": self.outcome, "error_code": self.error_code},
                **self.signal_kwargs(),
            )
        finally:
            self._run_closers()
