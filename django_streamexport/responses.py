"""Wrap an :class:`~django_streamexport.streaming.ExportStream` in an HTTP response.

Views, admin actions and anything else that answers a request with an export
share this, so every export response carries the same headers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.http import HttpRequest, StreamingHttpResponse

from django_streamexport.asgi import AsyncExportStream, AsyncNoBody, is_asgi_request
from django_streamexport.conf import conf
from django_streamexport.http import attachment_header, safe_filename
from django_streamexport.streaming import ExportStream


def export_headers(stream: ExportStream, filename: str) -> dict[str, str]:
    """Return the headers of an export response besides ``Content-Type``.

    ``Content-Disposition: attachment`` with ``filename`` cleaned and given the
    format's extension; ``Cache-Control: no-store`` (exports are per-user data,
    never cached); ``X-Content-Type-Options: nosniff``; ``X-Export-Id`` to
    match log lines; ``X-Accel-Buffering: no`` unless
    ``STREAMEXPORT_X_ACCEL_BUFFERING`` is False, so nginx passes chunks on at
    once.  Never ``Content-Length`` (unknown until the end) and no hop-by-hop
    headers (``Transfer-Encoding`` is the server's business).
    """
    headers = {
        "Content-Disposition": attachment_header(safe_filename(filename, stream.format.extension)),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Export-Id": stream.export_id,
    }
    if conf.X_ACCEL_BUFFERING:
        headers["X-Accel-Buffering"] = "no"
    return headers


class _NoBody:
    """An empty body that closes the stream it stands for (``HEAD``): releases its slot.

    :class:`~django_streamexport.asgi.AsyncNoBody` is its ASGI twin.
    """

    def __init__(self, stream: ExportStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return iter(())

    def close(self) -> None:
        self._stream.close()


def export_response(
    stream: ExportStream,
    filename: str,
    *,
    include_body: bool = True,
    response_class: type[StreamingHttpResponse] = StreamingHttpResponse,
    request: HttpRequest | None = None,
) -> StreamingHttpResponse:
    """Return a streaming response whose body is ``stream``.

    With ``include_body=False`` (a ``HEAD`` request) the response has the same
    headers and an empty body, and the stream is never iterated, so the export
    query never runs.  Closing the response closes the stream, which releases
    its cursor and its admission slot (also for ``HEAD``).  Given the
    ``request`` of an ASGI server, the body is an async iterator
    (:mod:`django_streamexport.asgi`), so Django streams it instead of reading
    it whole into memory.
    """
    content: Any
    if is_asgi_request(request):
        content = AsyncExportStream(stream) if include_body else AsyncNoBody(stream)
    else:
        content = stream if include_body else _NoBody(stream)
    response = response_class(content, content_type=stream.format.content_type)
    for header, value in export_headers(stream, filename).items():
        response[header] = value
    return response
