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
