"""Errors an export request can cause; views answer them with a 4xx response."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError


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


#: The longest refusal reason shown to a client, in characters.
MAX_REASON = 200
#: The reason given when an error's message would speak of Django's internals.
UNBUILDABLE = "the query cannot be built from their values"


def refusal_reason(exc: BaseException) -> str:
    """Return what a client may read of ``exc``, a refusal of the export's filters.

    The first line of the message of a value error (``year 99999 is out of range``),
    a validation error or a database's data error (PostgreSQL's primary message, without
    ``DETAIL`` or ``CONTEXT``), at most :data:`MAX_REASON` characters, control characters
    replaced; a fixed sentence for other errors (``IndexError``, ``TypeError``), whose
    messages speak of Django's internals.
    """
    from django.db import DataError

    if isinstance(exc, ValidationError):
        text = "; ".join(exc.messages)
    elif isinstance(exc, DataError):
        diag = getattr(exc.__cause__, "diag", None)  # psycopg 3 and psycopg2 errors
        text = getattr(diag, "message_primary", None) or str(exc)
    elif isinstance(exc, (ValueError, ArithmeticError)):
        text = str(exc)
    else:
        text = ""
    text = re.sub(r"[\x00-\x1f\x7f]", "?", text.strip().split("\n", 1)[0]).rstrip(".")
    if not text:
        return UNBUILDABLE
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class FiltersRefused(ExportRequestError, ValueError):
    """The query compiler, the database driver or the database refuses the export's filters (400).

    Raised before the response starts, from values a request put in the filters: a value
    a lookup cannot compile (``time_hour__year__gt=99999``, a ``__range`` of one value), a
    NUL byte PostgreSQL text cannot hold, a regular expression PostgreSQL cannot compile.
    ``reason`` is what the client reads (:func:`refusal_reason`); ``parameter`` the query
    parameter that caused it, once :meth:`naming` could tell which.  Also a
    ``ValueError``, which the query compiler raised for most of these before.
    """

    def __init__(self, reason: str, *, parameter: str | None = None) -> None:
        self.reason = reason
        self.parameter = parameter
        if parameter is None:
            message = f"The export's filters were refused: {reason}."
        else:
            message = f"The filter {parameter[:60]!r} was refused: {reason}."
        super().__init__(message)

    @classmethod
    def from_error(cls, exc: BaseException) -> FiltersRefused:
        """Return the refusal of the filters that ``exc`` was raised for."""
        return cls(refusal_reason(exc))

    def naming(self, parameters: Mapping[str, Any] | None) -> FiltersRefused:
        """Return this refusal naming the parameter of ``parameters`` that caused it, if known.

        ``parameters`` is the request's query (a ``QueryDict``, or a mapping of names to
        a value or a list of values).  A parameter is named when it is the only one that
        can explain the refusal: for a NUL byte, the only one holding a NUL; otherwise
        the only one whose value the reason quotes as a word (``year 99999 is out of
        range`` for ``time_hour__year__gt=99999``).  Else ``self``, unnamed.
        """
        if self.parameter is not None or not parameters:
            return self
        items = [(name, value) for name in parameters for value in _values(parameters, name)]
        if "NUL" in self.reason or "0x00" in self.reason:
            suspects = {name for name, value in items if "\x00" in name or "\x00" in value}
        else:
            suspects = {
                name
                for name, value in items
                if len(value.strip()) >= 2
                and re.search(rf"(?<![\w.]){re.escape(value.strip())}(?![\w.])", self.reason)
            }
        if len(suspects) != 1:
            return self
        return type(self)(self.reason, parameter=suspects.pop())


def _values(parameters: Mapping[str, Any], name: str) -> Iterable[str]:
    getlist = getattr(parameters, "getlist", None)
    values = getlist(name) if getlist is not None else parameters[name]
    if isinstance(values, str) or not isinstance(values, Iterable):
        values = [values]
    return [str(value) for value in values]


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
