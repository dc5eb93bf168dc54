"""Typed, lazily read ``STREAMEXPORT_*`` settings.

Every setting is read from ``django.conf.settings`` at call time, so
``override_settings`` works in tests and nothing is cached at import time.
Each property documents its type and default; the README's settings reference
mirrors them.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings

DEFAULT_FORMATS = (
    "django_streamexport.formats.csv.CSVFormat",
    "django_streamexport.formats.ndjson.NDJSONFormat",
)


class Settings:
    """Read ``STREAMEXPORT_*`` settings with their defaults."""

    @property
    def CHUNK_SIZE(self) -> int:
        """Rows fetched from the database per round trip (``FETCH FORWARD n``). Default 2000."""
        return getattr(settings, "STREAMEXPORT_CHUNK_SIZE", 2000)

    @property
    def BUFFER_SIZE(self) -> int:
        """Bytes collected before a chunk is handed to the server. Default 65536 (64 KiB)."""
        return getattr(settings, "STREAMEXPORT_BUFFER_SIZE", 64 * 1024)

    @property
    def DATABASE(self) -> str | None:
        """Database alias exports read from; ``None`` asks the routers (``db_for_read``)."""
        return getattr(settings, "STREAMEXPORT_DATABASE", None)

    @property
    def FORMATS(self) -> Sequence[str]:
        """Dotted paths of the format classes a view offers when it names none."""
        return getattr(settings, "STREAMEXPORT_FORMATS", DEFAULT_FORMATS)

    @property
    def CSV_DELIMITER(self) -> str:
        """One-character CSV field separator. Default ``","`` (use ``";"`` for some Excel locales)."""
        return getattr(settings, "STREAMEXPORT_CSV_DELIMITER", ",")

    @property
    def CSV_BOM(self) -> bool:
        """Start CSV files with a UTF-8 byte order mark so Excel detects UTF-8. Default False."""
        return getattr(settings, "STREAMEXPORT_CSV_BOM", False)

    @property
    def CSV_ESCAPE_FORMULAS(self) -> bool:
        """Prefix ``'`` to text cells that a spreadsheet would run as a formula. Default True."""
        return getattr(settings, "STREAMEXPORT_CSV_ESCAPE_FORMULAS", True)

    @property
    def COPY_MODE(self) -> bool | str:
        """Produce CSV bodies with PostgreSQL ``COPY`` (``True``, ``"require"``). Default False.

        ``True`` falls back to the standard path when COPY cannot give the same
        output; ``"require"`` raises ``ImproperlyConfigured`` instead.  See
        :mod:`django_streamexport.pgcopy`.
        """
        return getattr(settings, "STREAMEXPORT_COPY_MODE", False)

    @property
    def X_ACCEL_BUFFERING(self) -> bool:
        """Send ``X-Accel-Buffering: no`` so nginx passes chunks on at once. Default True."""
        return getattr(settings, "STREAMEXPORT_X_ACCEL_BUFFERING", True)


conf = Settings()
