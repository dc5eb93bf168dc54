"""NDJSON: one JSON object per line, serialised with orjson."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import orjson

from django_streamexport.columns import ResolvedColumn
from django_streamexport.conf import conf
from django_streamexport.formats.base import ExportFormat, Row, decimal_text


def _default(value: object) -> object:
    # orjson calls this for types it does not know (Decimal inside JSON
    # fields, arrays of custom types, ...); keep decimals exact.
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


class NDJSONFormat(ExportFormat):
    """Write each row as a JSON object on its own line (NDJSON / JSON Lines, LF-terminated).

    Keys are the declared export field names, in order.  Values: ``None`` is
    ``null``; booleans ``true``/``false``; numbers as JSON numbers except
    decimals, which are exact strings (``"12.50"``, as Django REST framework
    does by default); datetimes ISO 8601 strings with their UTC offset;
    dates, times and UUIDs strings; JSON fields nested as JSON.

    Control records, told from data rows by their ``"_type"`` key:

    * on failure, a last line ``{"_type":"error","error":{"code":"row_limit",
      "message":"..."}}``, then the transfer is aborted;
    * on success, if ``end_record`` (default ``STREAMEXPORT_NDJSON_END_RECORD``),
      a last line ``{"_type":"end","rows":N}`` with the number of data rows.
      Consumers should then treat a file without it as incomplete.
    """

    format = "ndjson"
    media_type = "application/x-ndjson"
    extension = "ndjson"
    independent_rows = True

    _options = orjson.OPT_APPEND_NEWLINE

    def __init__(
        self, columns: Sequence[ResolvedColumn], *, end_record: bool | None = None
    ) -> None:
        self.end_record = conf.NDJSON_END_RECORD if end_record is None else end_record
        super().__init__(columns)

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Return a batch of rows as newline-terminated JSON objects."""
        keys = [column.name for column in self.columns]
        dumps = orjson.dumps
        options = self._options
        return b"".join(
            [
                dumps(dict(zip(keys, row, strict=True)), default=_default, option=options)
                for row in self.convert_rows(rows)
            ]
        )

    def end(self, rows: int | None = None) -> bytes:
        """Return the end record ``{"_type":"end","rows":N}`` when ``end_record`` is on."""
        if not self.end_record:
            return b""
        return orjson.dumps({"_type": "end", "rows": rows}, option=self._options)

    def error(self, code: str, message: str) -> bytes:
        """Return the error record ``{"_type":"error","error":{"code":...,"message":...}}``."""
        return orjson.dumps(
            {"_type": "error", "error": {"code": code, "message": message}}, option=self._options
        )
