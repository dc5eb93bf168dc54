"""What a client is told when an export fails after its first byte.

Once the status line has gone out the status cannot change, so a failure is
reported twice: in-band, by the format's
:meth:`~django_streamexport.formats.base.ExportFormat.error` bytes
(NDJSON writes an error record; CSV has no place for one and writes nothing),
and by the transport: the exception is re-raised and the server aborts the
chunked transfer, with no terminating chunk.  PEP 3333 (``start_response``
with ``exc_info``): once the headers are sent, "it is not safe for the
application to attempt error output to the browser"; gunicorn's
``handle_request()`` (``gunicorn/workers/base_async.py``) then shuts the
socket down mid-body.

The message is fixed per code and never carries internals (SQL, tracebacks,
driver messages); the log line carries those, under the export id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import Error as DatabaseError
from django.db import InterfaceError, OperationalError
from django.utils.translation import gettext_lazy as _

from django_streamexport.exceptions import RowLimitExceeded

logger = logging.getLogger("django_streamexport")

#: The export had more rows than its limit (``STREAMEXPORT_MAX_ROWS`` or a view's ``max_rows``).
ROW_LIMIT = "row_limit"
#: A database statement ran longer than ``STREAMEXPORT_STATEMENT_TIMEOUT`` (SQLSTATE 57014).
STATEMENT_TIMEOUT = "statement_timeout"
#: The client read too slowly: ``idle_in_transaction_session_timeout`` ended the session (25P03).
IDLE_TIMEOUT = "idle_timeout"
#: The database session was ended or lost (57P01-57P03, class 08, a closed connection).
DATABASE_UNAVAILABLE = "database_unavailable"
#: Any other database error.
DATABASE_ERROR = "database_error"
#: Any other error.
EXPORT_ERROR = "export_error"

MESSAGES = {
    ROW_LIMIT: _("The export has more rows than its limit of {limit} and was stopped."),
    STATEMENT_TIMEOUT: _("A database query of the export ran too long and was cancelled."),
    IDLE_TIMEOUT: _("The export was stopped because the download was read too slowly."),
    DATABASE_UNAVAILABLE: _("The connection to the database was lost."),
    DATABASE_ERROR: _("The database reported an error."),
    EXPORT_ERROR: _("The export failed."),
}


@dataclass(frozen=True)
class Failure:
    """A failure as a client sees it: a stable ``code`` and a short ``message``."""

    code: str
    message: str


def sqlstate(exc: BaseException) -> str | None:
    """Return the PostgreSQL SQLSTATE behind ``exc``, or ``None``.

    Django wraps driver errors and keeps the driver's in ``__cause__``;
    psycopg 3 names the code ``sqlstate``, psycopg2 ``pgcode``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if code:
            return str(code)
        current = current.__cause__ or current.__context__
    return None


def describe_failure(exc: BaseException) -> Failure:
    """Return the client-facing :class:`Failure` for an exception raised mid-export."""
    if isinstance(exc, RowLimitExceeded):
        return Failure(ROW_LIMIT, str(MESSAGES[ROW_LIMIT]).format(limit=exc.limit))
    state = sqlstate(exc)
    if state == "57014":
        code = STATEMENT_TIMEOUT
    elif state == "25P03":
        code = IDLE_TIMEOUT
    elif state in {"57P01", "57P02", "57P03"} or (state or "").startswith("08"):
        code = DATABASE_UNAVAILABLE
    elif state is None and "idle-in-transaction timeout" in str(exc):
        # psycopg2 reports the server's FATAL on a closed connection without its
        # SQLSTATE; the message is PostgreSQL's (postgres.c, ERRCODE 25P03).
        code = IDLE_TIMEOUT
    elif state is None and isinstance(exc, (OperationalError, InterfaceError)):
        # No SQLSTATE: the driver lost the connection (closed socket, killed backend).
        code = DATABASE_UNAVAILABLE
    elif isinstance(exc, DatabaseError) or state is not None:
        code = DATABASE_ERROR
    else:
        code = EXPORT_ERROR
    return Failure(code, str(MESSAGES[code]))


def log_failure(stream: Any, failure: Failure, exc: BaseException, seconds: float) -> None:
    """Log an export's failure at ERROR with its id, rows, bytes, seconds and code.

    A traceback only where it can help (database and other errors), not for limits
    and timeouts, whose cause the code says.
    """
    logger.error(
        "Export %s failed after %d rows, %d bytes, %.3f s (%s): %s",
        *(stream.export_id, stream.rows, stream.bytes, seconds, failure.code, exc),
        exc_info=failure.code in (DATABASE_ERROR, EXPORT_ERROR),
    )
