"""Errors an export request can cause; views answer them with a 4xx response."""

from __future__ import annotations


class ExportRequestError(Exception):
    """The request asks for an export that cannot be made.

    Views answer with a plain-text response of ``status_code`` carrying the
    message, before any streaming starts.  The message is shown to the client:
    keep internals out of it.
    """

    status_code = 400


class UnknownFormat(ExportRequestError):
    """The ``format`` query parameter names no format the view offers (400)."""


class UnknownField(ExportRequestError):
    """The request asks for a field the export does not declare (400)."""


class ExportRefused(ExportRequestError):
    """The export cannot start now; try again later (``status_code`` 429 or 503).

    Raised before any streaming starts; views answer with ``Retry-After``
    set to ``retry_after`` seconds.
    """

    status_code = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyExports(ExportRefused):
    """The process (or this user) already runs the most exports allowed at once (429)."""

    status_code = 429


class DatabaseUnavailable(ExportRefused):
    """The export's database cannot be reached, checked before the 200 goes out (503)."""

    status_code = 503


class RowLimitExceeded(Exception):
    """The export has more rows than its limit allows; raised mid-stream, aborts the transfer.

    ``limit`` is the number of rows the export may send.  The client sees the
    rows up to the limit, then (NDJSON) an error record with code
    ``"row_limit"``, then a truncated transfer.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"The export has more than {limit} rows.")
        self.limit = limit
