"""NDJSON: one JSON object per line, serialised with orjson."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import orjson

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
    """

    format = "ndjson"
    media_type = "application/x-ndjson"
    extension = "ndjson"

    _options = orjson.OPT_APPEND_NEWLINE

    def render_rows(self, rows: Sequence[Row]) -> bytes:
        """Return a batch of rows as newline-terminated JSON objects."""
        keys = [column.name for column in self.columns]
        dumps = orjson.dumps
        options = self._options
        return b"".join(
            [dumps(dict(zip(keys, row)), default=_default, option=options)
             for row in self.convert_rows(rows)]
        )
