"""A JSON array (RFC 8259): one document ``[{...},{...}]``, streamed row by row."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from django_streamexport.columns import ResolvedColumn
from django_streamexport.formats.base import Row
from django_streamexport.formats.ndjson import NDJSONFormat, _default

__all__ = ["JSONFormat"]


class JSONFormat(NDJSONFormat):
    """Write rows as one JSON array of objects, for consumers that cannot read NDJSON.

    The objects are NDJSON's (same keys and values), one per line inside ``[`` and
    ``]``; an empty export is ``[]``.  A consumer parses the whole document
    (``response.json()``, ``JSON.parse``), so it is usable once complete; a failure
    mid-stream sends nothing more and the transfer is aborted, leaving invalid JSON,
    never a closed array that looks complete (RFC 8259 §5).
    """

    format = "json"
    media_type = "application/json"
    extension = "json"

    def __init__(self, columns: Sequence[ResolvedColumn]) -> None:
        super().__init__(columns, end_record=False)
        self._separator = b"\n"

    def start(self) -> bytes:
        """Return ``[``: sent before the query runs."""
        return b"["

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Return a batch of rows as array elements, each on its own line."""
        if not rows:
            return b""
        keys = [column.name for column in self.columns]
        dumps = orjson.dumps
        data = b",\n".join(
            [
                dumps(dict(zip(keys, row, strict=True)), default=_default)
                for row in self.convert_rows(rows)
            ]
        )
        separator, self._separator = self._separator, b",\n"
        return separator + data

    def end(self, rows: int | None = None) -> bytes:
        """Return ``]`` (after a line break when the array has elements)."""
        return b"\n]\n" if rows else b"]\n"

    def error(self, code: str, message: str) -> bytes:
        """Return nothing: the cut array stays invalid JSON, and the transfer is aborted."""
        return b""
