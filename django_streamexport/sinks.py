"""Where an export's bytes go: an HTTP response body (sync or async) or a binary file.

Every entry point iterates the same :class:`~django_streamexport.streaming.ExportStream`,
so a view, an admin action, the ``streamexport`` command and a file in storage get the
same bytes.

**WSGI** servers iterate the stream itself (:func:`http_body`).  **ASGI**: given a
*sync* iterator, ``StreamingHttpResponse`` warns "must consume synchronous iterators in
order to serve them asynchronously" and reads the whole iterator into a list before
sending a byte (``django/http/response.py``, ``StreamingHttpResponse.__aiter__``).
:class:`AsyncExportStream` offers only ``__aiter__``, so Django takes the async path:
each chunk is produced by the sync stream in Django's thread-sensitive thread
(``sync_to_async(thread_sensitive=True)``, where the request's database connection
lives) and handed to the server at once.

On a client disconnect, Django >= 5.0 cancels the response task
(``ASGIHandler.listen_for_disconnect``, release notes 5.0), which raises
``asyncio.CancelledError`` at the ``await`` of the current chunk; the ``finally`` then
closes the sync stream (closing its server-side cursor and transaction) in that same
thread, after the chunk in flight.  Async generators consumed by a bare ``async for``
are otherwise closed only when garbage collected (Django ticket #37066), so nothing here
relies on that.  Django 4.2 does not watch for disconnects under ASGI: there the export
runs to its end.

**Files** (:func:`write_to_file`): any object with a binary ``write()`` (an open file,
``sys.stdout.buffer``, a Django storage file).  :func:`open_output_file` opens a path as
the ``streamexport`` command does: a regular file is replaced atomically, anything else
(a FIFO, a device, ``/dev/stdout``) is written straight.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import IO, Any, cast

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest

from django_streamexport.streaming import ExportStream

__all__ = [
    "AsyncExportStream",
    "AsyncNoBody",
    "NoBody",
    "http_body",
    "is_asgi_request",
    "open_output_file",
    "resolve_output",
    "write_to_file",
]

_DONE = object()


def is_asgi_request(request: HttpRequest | None) -> bool:
    """Return True when ``request`` came through Django's ASGI handler."""
    return isinstance(request, ASGIRequest)


def _next_chunk(iterator: Iterator[bytes]) -> object:
    # StopIteration cannot cross an await (PEP 479 turns it into RuntimeError).
    return next(iterator, _DONE)


class AsyncExportStream:
    """Iterate over an export stream asynchronously, one chunk per thread hop.

    The stream is a :class:`~django_streamexport.streaming.ExportStream`.

    Chunks are the sync stream's (about ``buffer_size`` bytes each), so the
    cost of a thread hop is paid once per chunk, not per row.  Iterable once.
    ``close()`` (sync; ``StreamingHttpResponse.close()`` calls it) and the
    async iterator's ``finally`` both close the sync stream; closing twice is
    harmless.
    """

    def __init__(self, stream: ExportStream) -> None:
        self.stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._generate()

    def close(self) -> None:
        """Close the sync stream (its cursor and transaction); call from sync code."""
        self.stream.close()

    async def _generate(self) -> AsyncIterator[bytes]:
        iterator = iter(self.stream)  # creates the generator; touches no database
        next_chunk = sync_to_async(_next_chunk, thread_sensitive=True)
        try:
            while True:
                chunk = await next_chunk(iterator)
                if chunk is _DONE:
                    break
                yield cast(bytes, chunk)
        finally:
            # Runs on completion, on an error and on cancellation (disconnect).
            # thread_sensitive: after any chunk still running in that thread,
            # and in the thread that owns the connection and its transaction.
            await sync_to_async(self.stream.close, thread_sensitive=True)()


class AsyncNoBody:
    """Yield nothing: the body of a ``HEAD`` response under ASGI.

    ``close()`` closes the stream it stands for, which was never iterated, so
    its admission slot is released and no query ever runs.
    """

    def __init__(self, stream: ExportStream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._nothing()

    async def _nothing(self) -> AsyncIterator[bytes]:
        return
        yield b""  # pragma: no cover - makes this an async generator

    def close(self) -> None:
        self._stream.close()


class NoBody:
    """An empty body that closes the stream it stands for (``HEAD`` under WSGI).

    The stream was never iterated, so no query ran; closing it releases its
    admission slot.  :class:`AsyncNoBody` is its ASGI twin.
    """

    def __init__(self, stream: ExportStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        self._stream.close()


def http_body(
    stream: ExportStream, request: HttpRequest | None, *, include_body: bool = True
) -> Iterable[bytes] | AsyncExportStream | AsyncNoBody:
    """Return what a ``StreamingHttpResponse`` should stream for ``stream``.

    The stream itself under WSGI, an :class:`AsyncExportStream` for a ``request`` that
    came through ASGI; with ``include_body=False`` (``HEAD``) an empty body that closes
    the stream, so the query never runs.
    """
    if is_asgi_request(request):
        return AsyncExportStream(stream) if include_body else AsyncNoBody(stream)
    return stream if include_body else NoBody(stream)


def write_to_file(
    stream: ExportStream,
    file: IO[bytes] | Any,
    *,
    progress: Callable[[ExportStream], None] | None = None,
) -> int:
    """Write every chunk of ``stream`` to the binary ``file``; return the bytes written.

    Chunks are about ``plan.buffer_size`` bytes; memory does not grow with rows.
    ``progress(stream)`` is called after each chunk written (``stream.rows`` and
    ``stream.bytes`` are current).  The stream's first chunk (a CSV header, yielded
    before the query runs) is held back until the query has answered: written with
    the first rows, or at the end of an export without rows.  So a query that fails
    at once (the database refuses it at its first ``FETCH``) writes nothing, not a
    header that would look like a complete export without rows.  The stream is closed
    at the end, also when the export or a write fails; the error propagates, and the
    caller must not keep what was written as if complete (:func:`open_output_file`
    renames a regular file into place only after success).
    """
    written = 0
    head: bytes | None = None  # the first chunk, until the query answers
    started = False
    try:
        for chunk in stream:
            if not started:
                if head is None:
                    head = chunk
                    continue
                if stream.outcome == "failed":
                    continue  # the format's error bytes; the stream raises next
                started = True
                chunk = head + chunk  # one write, as the stream's chunks are
            file.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(stream)
        if not started and head:
            file.write(head)
            written += len(head)
            if progress is not None:
                progress(stream)
    finally:
        stream.close()
    return written


#: The directory of a process's open descriptors, as ``os.path.realpath()`` spells it.
_DESCRIPTORS = re.compile(r"/proc/(?P<pid>\d+)(?:/task/\d+)?/fd")
#: Symbolic links followed at most (Linux's ``MAXSYMLINKS``).
_MAX_LINKS = 40


def resolve_output(path: str) -> tuple[str, int | None]:
    """Return the file ``path`` names, its symbolic links followed, and a descriptor.

    Links are followed one at a time, so a name of an open descriptor (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/PID/fd/N``, Linux's "magic links" whose targets, such as
    ``pipe:[1234]`` or the path of a file since renamed, are not paths to write to) is
    noticed: the second value is then this process's descriptor number ``N``, or ``-1``
    for another process's; ``None`` for any other path.  Raises ``OSError`` (``ELOOP``)
    past 40 links.
    """
    current = os.path.join(os.getcwd(), path)
    for _ in range(_MAX_LINKS):
        parent = os.path.realpath(os.path.dirname(current))
        current = os.path.join(parent, os.path.basename(current))
        names = _DESCRIPTORS.fullmatch(parent)
        if names is not None:
            number = os.path.basename(current)
            own = int(names["pid"]) == os.getpid() and number.isdigit()
            return current, int(number) if own else -1
        if not os.path.islink(current):
            return current, None
        current = os.path.join(parent, os.readlink(current))  # relative to the link's directory
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


@contextlib.contextmanager
def open_output_file(path: str) -> Iterator[IO[bytes]]:
    """Open ``path`` for an export's bytes; yield a binary file.

    A **regular file**, or a path where nothing exists yet, is written beside itself as
    ``<file>.part`` and renamed over it when the block ends without an error (keeping
    an existing file's permission bits), so a failed export never leaves a truncated
    file that looks complete; on an error the ``.part`` file is removed.  A **symbolic
    link** is followed: the file it names is replaced so, and the link stays a link.
    **Anything else** (a FIFO, a character device such as ``/dev/null``, ``/dev/stdout``
    or another name of an open descriptor) is written straight, as a shell's ``>``
    would: renaming over it would replace it with a regular file, and its reader would
    get nothing.  A descriptor of this process (``/dev/stdout``) is written through a
    duplicate, so its offset (a file opened with ``>>``) is kept.

    Raises ``OSError`` when ``path`` cannot be written (``IsADirectoryError`` for a
    directory or a path ending in ``/``; ``FileNotFoundError`` for a missing
    directory).
    """
    if not path or path.endswith(os.sep):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    target, descriptor = resolve_output(path)
    try:
        status: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        status = None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if descriptor is not None or (status is not None and not stat.S_ISREG(status.st_mode)):
        if descriptor is not None and descriptor >= 0:
            file = os.fdopen(os.dup(descriptor), "wb")
        else:
            # Appending keeps what another process's descriptor already holds.
            file = open(target, "ab" if descriptor is not None else "wb")
        with _closed_on_error(file):
            yield file
        return
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"no directory {directory!r}", path)
    partial = f"{target}.part"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        file = os.fdopen(os.open(partial, flags, 0o666), "wb")
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create {partial!r}: {exc.strerror}", path) from exc
    try:
        with _closed_on_error(file):
            yield file
        if status is not None:
            os.chmod(partial, stat.S_IMODE(status.st_mode))
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


@contextlib.contextmanager
def _closed_on_error(file: IO[bytes]) -> Iterator[None]:
    """Close ``file`` at the end: its error propagates, unless another error does."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            file.close()  # flushes into a broken pipe: that error is not the news
        raise
    file.close()
