"""Typed, lazily read ``STREAMEXPORT_*`` settings.

Every setting is read from ``django.conf.settings`` at call time, so
``override_settings`` works in tests and nothing is cached at import time.
Each property documents its type and default; the documentation's settings reference
(docs/reference/settings.rst) is generated from them when it is built, and
:func:`django_streamexport.checks.check_settings` validates
every one at start-up (ids ``django_streamexport.E001`` to ``E023`` and ``E101``).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings

#: The default of ``STREAMEXPORT_FORMATS``: every built-in format, CSV first.
DEFAULT_FORMATS = (
    "django_streamexport.formats.csv.CSVFormat",
    "django_streamexport.formats.ndjson.NDJSONFormat",
    "django_streamexport.formats.xlsx.XLSXFormat",
    "django_streamexport.formats.json.JSONFormat",
    # Offered only where pyarrow is installed (the [parquet] extra; check I001).
    "django_streamexport.formats.parquet.ParquetFormat",
)
#: Formats of DEFAULT_FORMATS that need an optional library, and the module it is.
OPTIONAL_FORMATS = {"django_streamexport.formats.parquet.ParquetFormat": "pyarrow"}


class Settings:
    """Read ``STREAMEXPORT_*`` settings with their defaults."""

    @property
    def CHUNK_SIZE(self) -> int:
        """Rows read from the database per round trip. Default 2000.

        A cursor export fetches this many rows per ``FETCH`` after a small first
        batch; a keyset export reads this many rows per page query.  A positive
        integer (check E001); a view's ``chunk_size`` wins.
        """
        return getattr(settings, "STREAMEXPORT_CHUNK_SIZE", 2000)

    @property
    def BUFFER_SIZE(self) -> int:
        """Approximate bytes per chunk handed to the server. Default 65536 (64 KiB).

        A positive integer (check E002); a view's ``buffer_size`` wins.
        """
        return getattr(settings, "STREAMEXPORT_BUFFER_SIZE", 64 * 1024)

    @property
    def TIME_SLICE(self) -> float:
        """The longest an export works without letting other requests run. Default 0.002 (2 ms).

        In seconds.  An export lets the others run after each slice of rows it renders
        (``gevent.sleep(0)`` once gevent has patched the process; threads are switched by
        the interpreter every ``sys.getswitchinterval()`` anyway).  A slice that would take
        longer than this (a large ``BUFFER_SIZE``, slow converters) is rendered in parts
        with a turn after each, for CSV, NDJSON and JSON (same chunks, same bytes); a
        prefetched ``FETCH`` of ``CHUNK_SIZE`` rows is turned into Python values slice by
        slice.  So
        a small request on a gevent worker waits for at most about this much of each
        export before it, whatever the step sizes.  A number of seconds above 0, at most 1
        (check E022); ``build_plan(time_slice=...)`` wins (a view passes it from
        ``get_export_plan_kwargs()``).
        """
        return getattr(settings, "STREAMEXPORT_TIME_SLICE", 0.002)

    @property
    def DATABASE(self) -> str | None:
        """Database alias exports read from. Default ``None``: ask the routers (``db_for_read``).

        A replica, or a direct connection when the default one goes through
        PgBouncer in transaction pooling mode.  An alias in ``DATABASES`` (check
        E005); a view's ``using`` wins.
        """
        return getattr(settings, "STREAMEXPORT_DATABASE", None)

    @property
    def FORMATS(self) -> Sequence[str]:
        """Dotted paths of the format classes offered where a view or admin names none.

        The first is the default format.  Default
        :data:`~django_streamexport.conf.DEFAULT_FORMATS`: CSV, NDJSON, XLSX, the JSON
        array and Parquet (Parquet only where pyarrow is installed, check I001).  A
        non-empty list or tuple of importable ``ExportFormat`` subclasses with distinct
        ``format`` names (check E004).
        """
        return getattr(settings, "STREAMEXPORT_FORMATS", DEFAULT_FORMATS)

    @property
    def CSV_DELIMITER(self) -> str:
        """One-character CSV field separator. Default ``","`` (``";"`` for some Excel locales).

        Neither a quote nor a line break (check E003); ``"\\t"`` for tab-separated values.
        """
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
    def TIME_ZONE(self) -> str | None:
        """The time zone datetimes are written in. Default ``None``: as the database returns
        them (UTC under ``USE_TZ = True``).

        ``"current"``: Django's current time zone when the export is planned
        (``timezone.activate()``, by a middleware for the request's user; else
        ``TIME_ZONE``); or an IANA name (``"Europe/Berlin"``).  Text formats write ISO
        8601 with the zone's offset; XLSX the wall time there (unless
        ``STREAMEXPORT_XLSX_TIME_ZONE`` is set); Parquet keeps UTC timestamps.  A view's
        ``time_zone``, the admin's and the DRF mixin's ``export_time_zone`` and
        ``build_plan(time_zone=...)`` win.  Checked by E021; see
        :mod:`django_streamexport.timezones`.
        """
        return getattr(settings, "STREAMEXPORT_TIME_ZONE", None)

    @property
    def COPY_MODE(self) -> bool | str:
        """Produce CSV bodies with PostgreSQL ``COPY``: ``True``, ``False`` or ``"require"``.

        Default ``True``: a CSV export uses ``COPY`` wherever it gives the same bytes as
        the cursor path (psycopg 3; see :mod:`django_streamexport.postgresql.copy`) and
        otherwise reads through the cursor, the reason in ``stream.reader.reason``.
        ``False`` opts out (always the cursor); ``"require"`` raises
        ``ImproperlyConfigured`` where COPY cannot be used.  Other formats never use COPY.
        A view's ``copy_mode`` wins.  The export's timeouts hold as on the cursor path:
        ``STREAMEXPORT_STATEMENT_TIMEOUT`` bounds each wait for the next chunk of rows,
        not the whole export.
        """
        return getattr(settings, "STREAMEXPORT_COPY_MODE", True)

    @property
    def DATABASE_FORMATTING(self) -> bool:
        """Let PostgreSQL spell CSV (and some XLSX) cells for cursor exports. Default True.

        Same bytes, about twice as fast: Python then only quotes strings.
        Applies where :func:`django_streamexport.postgresql.text.text_select` can
        spell every column and the format's converters are the defaults; other exports
        (NDJSON, custom converters, JSON columns, values Django converts after reading,
        SQLite) format values in Python, and the stream's ``reader.reason`` says why.  An
        XLSX export gets its decimal, float and datetime cells as their XML
        (:mod:`django_streamexport.postgresql.xlsx`; the other columns as values, which
        Python spells faster than SQL), the same bytes, unless its format class changes
        how cells are written.  ``False`` formats every value in Python, and also keeps
        CSV off ``COPY`` (which spells cells in SQL too) unless ``STREAMEXPORT_COPY_MODE``
        is ``"require"``.  A view's ``database_formatting`` (or the plan's option) wins.
        """
        return getattr(settings, "STREAMEXPORT_DATABASE_FORMATTING", True)

    @property
    def X_ACCEL_BUFFERING(self) -> bool:
        """Send ``X-Accel-Buffering: no`` so nginx passes chunks on at once. Default True.

        nginx then passes the chunks on as they come even where proxy buffering is on.
        """
        return getattr(settings, "STREAMEXPORT_X_ACCEL_BUFFERING", True)

    @property
    def ADMIN_EXPORT_PERMISSION(self) -> str:
        """What admin exports require: ``"view"`` (the default) or ``"export"``.

        ``"view"``: the model's view (or change) permission.  ``"export"``: that
        and a dedicated ``<app_label>.export_<model_name>`` permission, which the
        project declares in the model's ``Meta.permissions`` (checks E101, W101).
        """
        return getattr(settings, "STREAMEXPORT_ADMIN_EXPORT_PERMISSION", "view")

    # --- Failures and limits (docs/pipeline.md, "Failures and limits") -----------------------

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
        transaction, so it bounds each statement: each ``FETCH`` of a cursor
        export (the first one includes sorting) and each page of a keyset export,
        not the whole export.  A COPY export is one statement that lasts as long as
        the export, so it sets ``statement_timeout = 0`` and holds the bound itself:
        each wait for the next chunk of rows (the first includes sorting) may last
        this long, then the COPY is cancelled (code ``statement_timeout``); a slow
        client is bounded by ``IDLE_IN_TRANSACTION_TIMEOUT``, not this one.  ``None``
        or ``0`` leaves the server's value (which a COPY export reads and holds the
        same way); at most 2147483.647 (PostgreSQL's limit, check E012).  A view's
        ``statement_timeout`` wins.
        """
        return getattr(settings, "STREAMEXPORT_STATEMENT_TIMEOUT", 300)

    @property
    def IDLE_IN_TRANSACTION_TIMEOUT(self) -> float | None:
        """Seconds an export's transaction may wait on a slow client (PostgreSQL). Default 120.

        Set with ``SET LOCAL idle_in_transaction_session_timeout``: when the
        client reads so slowly that no ``FETCH`` is sent for this long,
        PostgreSQL ends the session and the export aborts (a truncated
        transfer, code ``idle_timeout``).  Prefetching and COPY exports, whose
        statement runs while the client is waited for, end the session themselves
        after as long.  ``None`` or ``0`` leaves the server's value (which those
        exports then read and hold too); at most 2147483.647 (check E013).  A view's
        ``idle_in_transaction_timeout`` wins.
        """
        return getattr(settings, "STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT", 120)

    @property
    def MAX_ROWS(self) -> int | None:
        """Most rows one export may send; past it the export aborts (code ``row_limit``).

        Default ``None``: no limit (``0`` too).  NDJSON then ends with the error record
        and a cut transfer, CSV with a cut transfer.  A view's ``max_rows`` wins (``0``:
        no limit).
        """
        return getattr(settings, "STREAMEXPORT_MAX_ROWS", None)

    @property
    def MAX_CONCURRENT_EXPORTS(self) -> int | None:
        """Exports streaming at once per process; more get a 429 with ``Retry-After``.

        Default ``None``: no cap (``0`` too).  Each export holds a database
        connection until its last byte: set it below the per-worker connection
        budget (gunicorn's ``worker_connections``) so ordinary pages keep
        connections.
        """
        return getattr(settings, "STREAMEXPORT_MAX_CONCURRENT_EXPORTS", None)

    @property
    def MAX_CONCURRENT_EXPORTS_PER_USER(self) -> int | None:
        """Exports one authenticated user may stream at once per process; more get a 429.

        Default ``None``: no cap (``0`` too).  Counted by the view's
        ``get_admission_key()``, the user's primary key.
        """
        return getattr(settings, "STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER", None)

    @property
    def RETRY_AFTER(self) -> int:
        """Seconds sent in ``Retry-After`` with a 429 or 503 refusal. Default 10."""
        return getattr(settings, "STREAMEXPORT_RETRY_AFTER", 10)

    # --- Formats: XLSX and Parquet ----------------------------------------------------------

    @property
    def XLSX_TIME_ZONE(self) -> str | None:
        """Time zone name aware datetimes are written in, in XLSX files (Excel has none).

        Default ``None``: the export's time zone (``STREAMEXPORT_TIME_ZONE``, a view's
        ``time_zone``), else the project's ``TIME_ZONE``.  Set, it wins over both for
        XLSX.  Checked by E018.
        """
        return getattr(settings, "STREAMEXPORT_XLSX_TIME_ZONE", None)

    @property
    def XLSX_COMPRESS_LEVEL(self) -> int:
        """Deflate level (0-9) of XLSX parts. Default 1: fastest, about 5x smaller than XML.

        0 stores the parts uncompressed.  Checked by E019.
        """
        return getattr(settings, "STREAMEXPORT_XLSX_COMPRESS_LEVEL", 1)

    @property
    def PARQUET_ROW_GROUP_ROWS(self) -> int:
        """Most rows per Parquet row group (one group is held in memory). Default 65536.

        A group ends at this many rows or at ``STREAMEXPORT_PARQUET_ROW_GROUP_BYTES``,
        whichever comes first.  Checked by E020.
        """
        return getattr(settings, "STREAMEXPORT_PARQUET_ROW_GROUP_ROWS", 65536)

    @property
    def PARQUET_ROW_GROUP_BYTES(self) -> int:
        """Most bytes of Arrow data per Parquet row group. Default 2097152 (2 MiB).

        Rows are held as Arrow arrays until they make a row group; the group is written
        once they pass this many bytes (``RecordBatch.nbytes``: the text bytes, 8 per
        integer, float or timestamp, 16 per decimal, plus offsets and validity bits) or
        ``STREAMEXPORT_PARQUET_ROW_GROUP_ROWS`` rows, whichever comes first, so wide rows
        and long texts make smaller groups and memory stays bounded by bytes, not rows.
        Writing a group takes about as much again (its encoded pages).  An integer from
        1 to 2**31 (check E023); a view's ``format_options`` ``row_group_bytes`` wins.
        """
        return getattr(settings, "STREAMEXPORT_PARQUET_ROW_GROUP_BYTES", 2 * 1024 * 1024)


#: The settings reader: ``conf.CHUNK_SIZE`` is ``STREAMEXPORT_CHUNK_SIZE`` or its default.
conf = Settings()
