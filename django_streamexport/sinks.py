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

On a client disconnect, Django cancels the response task
(``ASGIHandler.listen_for_disconnect``, release notes 5.0), which raises
``asyncio.CancelledError`` at the ``await`` of the current chunk; the ``finally`` then
closes the sync stream (closing its server-side cursor and transaction) in that same
thread, after the chunk in flight.  Async generators consumed by a bare ``async for``
are otherwise closed only when garbage collected (Django ticket #37066), so nothing here
relies on that.

**Files** (:func:`write_to_file`): any object with a binary ``write()`` (an open file,
``sys.stdout.buffer``, a Django storage file).
"""

from __future__ import annotations

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
    """Iterate over an :class:`ExportStream` asynchronously, one chunk per thread hop.

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
    ``progress(stream)`` is called after each chunk (``stream.rows`` and
    ``stream.bytes`` are current).  The stream is closed at the end, also when the
    export or a write fails; the error propagates, and the caller must not keep what
    was written as if complete (the ``streamexport`` command writes beside the target
    and renames only after success).
    """
    written = 0
    try:
        for chunk in stream:
            file.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(stream)
    finally:
        stream.close()
    return written
