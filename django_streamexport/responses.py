"""The one HTTP start-up sequence of an export: admission, database check, headers, response.

Views, admin actions and the admin export page, and the DRF mixin all answer through
:func:`admitted_export_response`, so they share the admission limits (429), the
database check (503), the query check (400, :func:`check_query`), the headers and the
body (:func:`~django_streamexport.sinks.http_body`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

from django.db import DataError, InterfaceError, OperationalError, connections, transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.translation import gettext as _

from django_streamexport.conf import conf
from django_streamexport.exceptions import (
    DatabaseUnavailable,
    ExportRefused,
    ExportRequestError,
    FiltersRefused,
)
from django_streamexport.failures import sqlstate
from django_streamexport.http import attachment_header
from django_streamexport.limits import Slot, export_slots
from django_streamexport.postgresql.explain import plan_query
from django_streamexport.sinks import http_body
from django_streamexport.streaming import ExportStream

logger = logging.getLogger("django_streamexport")


def export_headers(stream: ExportStream) -> dict[str, str]:
    """Return the headers of an export response besides ``Content-Type``.

    ``Content-Disposition: attachment`` with the plan's cleaned ``filename`` (RFC 6266);
    ``Cache-Control: no-store`` (exports are per-user data, never cached);
    ``X-Content-Type-Options: nosniff``; ``X-Export-Id`` to match log lines;
    ``X-Accel-Buffering: no`` unless ``STREAMEXPORT_X_ACCEL_BUFFERING`` is False, so
    nginx passes chunks on at once.  Never ``Content-Length`` (unknown until the end)
    and no hop-by-hop headers (``Transfer-Encoding`` is the server's business).
    """
    headers = {
        "Content-Disposition": attachment_header(stream.plan.filename),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Export-Id": stream.export_id,
    }
    if conf.X_ACCEL_BUFFERING:
        headers["X-Accel-Buffering"] = "no"
    return headers


def export_response(
    stream: ExportStream,
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
    (:mod:`django_streamexport.sinks`), so Django streams it instead of reading
    it whole into memory.
    """
    content = http_body(stream, request, include_body=include_body)
    response = response_class(content, content_type=stream.format.content_type)
    for header, value in export_headers(stream).items():
        response[header] = value
    return response


def user_admission_key(request: HttpRequest | None) -> Hashable | None:
    """Return the key per-user export limits count under: the authenticated user's pk.

    Anonymous requests (and no request) return ``None``: they count only
    against the process-wide limit.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return ("user", user.pk)
    return None


def admit_export(key: Hashable | None) -> Slot:
    """Take a place among the exports running in this process; release it with ``slot.release()``.

    Raises :class:`~django_streamexport.exceptions.TooManyExports` (429) past
    ``STREAMEXPORT_MAX_CONCURRENT_EXPORTS``, or past
    ``STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER`` for ``key``.
    """
    return export_slots.acquire(
        key,
        limit=conf.MAX_CONCURRENT_EXPORTS,
        per_user_limit=conf.MAX_CONCURRENT_EXPORTS_PER_USER,
        retry_after=conf.RETRY_AFTER,
    )


def ensure_database(stream: ExportStream) -> None:
    """Make sure the export's database answers before the 200 goes out.

    Opens the connection the stream will use, or checks an open one with a
    round trip (``is_usable()``) and replaces it if the server dropped it: a
    persistent connection (``CONN_MAX_AGE``) without ``CONN_HEALTH_CHECKS``
    would otherwise fail only after the 200.  Raises
    :class:`~django_streamexport.exceptions.DatabaseUnavailable` (503) when it
    cannot be opened; once streaming has started the status could no longer
    change.
    """
    connection = connections[stream.using]
    try:
        if (
            connection.connection is not None
            and not connection.in_atomic_block
            and not connection.is_usable()
        ):
            logger.info(
                "Export %s: database %r connection was dropped; reconnecting.",
                stream.export_id,
                stream.using,
            )
            connection.close()
        connection.ensure_connection()
    except (OperationalError, InterfaceError) as exc:
        raise _unavailable(stream, exc) from exc


#: SQLite's answer when a Python function of the query (Django's ``REGEXP``) raised.
SQLITE_FUNCTION_FAILED = "user-defined function raised exception"


def check_query(stream: ExportStream) -> None:
    """Have the driver and the database refuse now what they would refuse at the first read.

    Runs before the status line goes out, on the reader's first query
    (:meth:`~django_streamexport.readers.base.Reader.first_select`) when it has
    parameters (Django passes every value of a filter as one; a query without any, such
    as an unfiltered export, is not checked): the driver adapts them and the database
    plans the query.  On PostgreSQL that is an ``EXPLAIN``
    with JIT off (:func:`~django_streamexport.postgresql.explain.plan_query`: one round
    trip; nothing runs; planning compiles constant regular expressions).  SQLite, which
    evaluates Python functions such as Django's ``REGEXP`` only on rows, runs the query
    to its first row (in process, no round trip).  Other databases are not checked.
    Inside a transaction the check runs in a savepoint, so a refusal leaves the
    transaction usable.

    Raises :class:`~django_streamexport.exceptions.FiltersRefused` (400) for values
    the driver or the database refuses: a data error (SQLSTATE class 22, such as an
    invalid regular expression or a value out of range; psycopg 3's NUL in text),
    psycopg2's ``ValueError`` for NUL, an integer SQLite cannot bind, an exception in a
    SQLite function.  Raises :class:`~django_streamexport.exceptions.DatabaseUnavailable`
    (503) when the connection fails or the plan's ``statement_timeout`` passes (planning
    waits for a table another session locked); other database errors (the code's, such as
    an unknown column) propagate.  The check does not hold the export's transaction or
    cursor open: whatever runs between the view and the body (middleware saving a
    session) stays outside the export's transaction, as before.
    """
    statement = stream.reader.first_select()
    connection = connections[stream.using]
    vendor = connection.vendor
    if statement is None or not statement[1] or vendor not in ("postgresql", "sqlite"):
        return  # a query without parameters holds no value from the request
    sql, params = statement
    try:
        if vendor == "postgresql":
            plan_query(connection, sql, params, statement_timeout=stream.plan.statement_timeout)
        else:
            _first_row(connection, sql, params)
    except (DataError, ValueError, ArithmeticError) as exc:
        raise _refused(stream, exc, FiltersRefused.from_error(exc)) from exc
    except OperationalError as exc:
        if vendor == "sqlite" and SQLITE_FUNCTION_FAILED in str(exc):
            refusal = FiltersRefused("the database cannot evaluate their values")
            raise _refused(stream, exc, refusal) from exc
        if sqlstate(exc) == "57014":  # the statement timeout: a table locked elsewhere
            logger.warning(
                "Export %s refused: database %r did not plan its query in time: %s",
                *(stream.export_id, stream.using, exc),
            )
            raise DatabaseUnavailable(
                _("The export database is busy right now; try again later."),
                retry_after=conf.RETRY_AFTER,
            ) from exc
        raise _unavailable(stream, exc) from exc
    except InterfaceError as exc:
        raise _unavailable(stream, exc) from exc


def _first_row(connection: Any, sql: str, params: Sequence[Any]) -> None:
    """Run ``sql`` to its first row (SQLite), in a savepoint inside a transaction."""
    savepoint: AbstractContextManager[Any] = (
        nullcontext() if connection.get_autocommit() else transaction.atomic(connection.alias)
    )
    with savepoint, connection.cursor() as cursor:
        cursor.execute(sql, params)
        cursor.fetchone()


def _refused(stream: ExportStream, exc: BaseException, refusal: FiltersRefused) -> FiltersRefused:
    logger.info(
        "Export %s refused: the database refused its filters: %s: %s",
        *(stream.export_id, type(exc).__name__, exc),
    )
    return refusal


def _unavailable(stream: ExportStream, exc: BaseException) -> DatabaseUnavailable:
    logger.warning(
        "Export %s refused: database %r unreachable: %s", stream.export_id, stream.using, exc
    )
    return DatabaseUnavailable(
        _("The export database cannot be reached right now; try again later."),
        retry_after=conf.RETRY_AFTER,
    )


def connections_per_greenlet() -> bool:
    """Say whether Django's connections are per greenlet here (gevent has patched ``threading``).

    Django keeps one connection per thread (``ConnectionHandler``, a thread-local); once
    gevent has patched ``threading`` every greenlet is a thread to it, so every request
    handled by a gevent worker gets its own connection.
    """
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def close_greenlet_connection(connection: Any) -> None:
    """Close ``connection`` if it is this greenlet's and no transaction is open on it.

    A closer of exports served by gevent (:func:`admitted_export_response`).  A persistent
    connection (``CONN_MAX_AGE`` > 0) would stay open with the greenlet's thread-local
    after the request, never reused by another greenlet, until garbage collection closes
    it: many exports would pile idle sessions up against ``max_connections``.  Closing it
    when the export ends returns it (or, with Django's pool, gives it back to the pool).
    Not from another greenlet (a closer may run at garbage collection): that connection is
    not this one's to close.
    """
    if connections[connection.alias] is connection and not connection.in_atomic_block:
        connection.close()


def admitted_export_response(
    stream: ExportStream,
    slot: Slot,
    *,
    check_database: Callable[[ExportStream], None] = ensure_database,
    include_body: bool = True,
    response_class: type[StreamingHttpResponse] = StreamingHttpResponse,
    request: HttpRequest | None = None,
) -> StreamingHttpResponse:
    """Return :func:`export_response` for an export admitted with ``slot`` (:func:`admit_export`).

    The slot is released when the stream ends or is closed.  Before the response
    starts, ``check_database`` (default :func:`ensure_database`; 503) and then, unless
    ``include_body`` is false, :func:`check_query` (400 for filters the driver or the
    database refuses) run; when either raises, the stream is closed, releasing the
    slot, and the error propagates.  A ``HEAD`` request never sends the query to the
    database (its filters were compiled with the stream, so the compiler's refusals are
    a 400 for it too).  Views, admin exports and the DRF mixin all start this way.
    Under gevent (:func:`connections_per_greenlet`) the export's database connection is
    closed when the stream ends (:func:`close_greenlet_connection`), whatever
    ``CONN_MAX_AGE`` says.
    """
    stream.add_closer(slot.release)
    if connections_per_greenlet():
        stream.add_closer(partial(close_greenlet_connection, connections[stream.using]))
    try:
        check_database(stream)
        if include_body:
            check_query(stream)
    except BaseException:
        stream.close()
        raise
    return export_response(
        stream,
        include_body=include_body,
        response_class=response_class,
        request=request,
    )


def export_error_response(exc: ExportRequestError) -> HttpResponse:
    """Return the plain-text 4xx/5xx response for an export that cannot start.

    The body is the exception's message (written for the client, no
    internals); refusals (429, 503) carry ``Retry-After`` in seconds.
    """
    response = HttpResponse(
        f"{exc}\n", status=exc.status_code, content_type="text/plain; charset=utf-8"
    )
    response["Cache-Control"] = "no-store"
    if isinstance(exc, ExportRefused):
        response["Retry-After"] = str(exc.retry_after)
    return response
