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
        """One-character CSV field separator. Default ``","`` (``";"`` for some Excel locales)."""
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
    def DATABASE_FORMATTING(self) -> bool:
        """Let PostgreSQL spell CSV cells as text for cursor exports. Default True.

        Same bytes, about twice as fast: Python then only quotes strings.  Applies
        where :func:`django_streamexport.pgtext.text_select` can spell every column;
        other exports format values in Python as before.
        """
        return getattr(settings, "STREAMEXPORT_DATABASE_FORMATTING", True)

    @property
    def X_ACCEL_BUFFERING(self) -> bool:
        """Send ``X-Accel-Buffering: no`` so nginx passes chunks on at once. Default True."""
        return getattr(settings, "STREAMEXPORT_X_ACCEL_BUFFERING", True)

    @property
    def ADMIN_EXPORT_PERMISSION(self) -> str:
        """What admin exports require: ``"view"`` (the model's view permission, the default)
        or ``"export"`` (view and a dedicated ``<app_label>.export_<model_name>`` permission)."""
        return getattr(settings, "STREAMEXPORT_ADMIN_EXPORT_PERMISSION", "view")

    # --- Failures and limits (README "Failures and limits") ---------------------------------

    @property
    def NDJSON_END_RECORD(self) -> bool:
        """End a complete NDJSON export with ``{"_type":"end","rows":N}``. Default False.

        Off by default because NDJSON's contract is one data object per line:
        ``jq``, ``pandas.read_json(lines=True)`` and bulk loaders would take the
        record for a row.  Turn it on when the consumers are yours and may sit
        behind a proxy that can hide a truncated transfer.
        """
        return getattr(settings, "STREAMEXPORT_NDJSON_END_RECORD", False)

    @property
    def STATEMENT_TIMEOUT(self) -> float | None:
        """Seconds one database statement of an export may run (PostgreSQL). Default 300.

        Set with ``SET LOCAL statement_timeout`` inside the export's
        transaction; with the ``WITHOUT HOLD`` cursor each ``FETCH`` is a
        statement, so it bounds each fetch (the first one includes sorting),
        not the whole export.  ``None`` or ``0`` leaves the server's value.
        """
        return getattr(settings, "STREAMEXPORT_STATEMENT_TIMEOUT", 300)

    @property
    def IDLE_IN_TRANSACTION_TIMEOUT(self) -> float | None:
        """Seconds an export's transaction may wait on a slow client (PostgreSQL). Default 120.

        Set with ``SET LOCAL idle_in_transaction_session_timeout``: when the
        client reads so slowly that no ``FETCH`` is sent for this long,
        PostgreSQL ends the session and the export aborts (a truncated
        transfer).  ``None`` or ``0`` leaves the server's value.
        """
        return getattr(settings, "STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT", 120)

    @property
    def MAX_ROWS(self) -> int | None:
        """Most rows one export may send; past it the export aborts (code ``row_limit``).

        Default ``None``: no limit.
        """
        return getattr(settings, "STREAMEXPORT_MAX_ROWS", None)

    @property
    def MAX_CONCURRENT_EXPORTS(self) -> int | None:
        """Exports streaming at once per process; more get a 429. Default ``None``: no cap."""
        return getattr(settings, "STREAMEXPORT_MAX_CONCURRENT_EXPORTS", None)

    @property
    def MAX_CONCURRENT_EXPORTS_PER_USER(self) -> int | None:
        """Exports one authenticated user may stream at once per process. Default ``None``."""
        return getattr(settings, "STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER", None)

    @property
    def RETRY_AFTER(self) -> int:
        """Seconds sent in ``Retry-After`` with a 429 or 503 refusal. Default 10."""
        return getattr(settings, "STREAMEXPORT_RETRY_AFTER", 10)


conf = Settings()
