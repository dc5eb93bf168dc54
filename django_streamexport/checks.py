"""System checks for settings and deployments that would break streaming.

Ids are stable; each is documented in docs/reference/checks.rst (the settings checks'
messages and hints are generated from :func:`check_settings` when the documentation is
built).
:func:`check_settings` validates every ``STREAMEXPORT_*`` setting (E001-E023, E101);
:func:`check_databases` and :func:`check_green_psycopg2` warn about deployments on which
exports would not stream (W001-W003), :func:`check_gevent_persistent_connections` about
connections a gevent worker would pile up (W004).  W101 is an admin check, reported by each
``ExportAdminMixin`` admin.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import zoneinfo
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_streamexport.conf import conf
from django_streamexport.plan import (
    is_count,
    is_integer,
    is_time_slice,
    is_timeout,
    server_side_cursors_disabled,
)
from django_streamexport.postgresql.guards import MAX_TIMEOUT_MS
from django_streamexport.timezones import is_time_zone

logger = logging.getLogger("django_streamexport")

#: Values of ``STREAMEXPORT_ADMIN_EXPORT_PERMISSION``.
ADMIN_EXPORT_PERMISSIONS = ("view", "export")


def _error(name: str, problem: str, hint: str, check_id: str) -> Error:
    """Return the error for ``STREAMEXPORT_<name>``: ``problem`` completes the sentence."""
    return Error(f"STREAMEXPORT_{name} {problem}", hint=hint, id=f"django_streamexport.{check_id}")


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Check every ``STREAMEXPORT_*`` setting's type and value (E001-E023, E101).

    One id per setting, returned in the order of the ids.  E101 is checked here, once,
    rather than by each export admin.
    """
    errors = [
        _positive_int("CHUNK_SIZE", "E001"),
        _positive_int("BUFFER_SIZE", "E002"),
        _csv_delimiter(),  # E003
        _formats(),  # E004
        _database(),  # E005
        _boolean("CSV_BOM", "E006"),
        _boolean("CSV_ESCAPE_FORMULAS", "E007"),
        _copy_mode(),  # E008
        _boolean("DATABASE_FORMATTING", "E009"),
        _boolean("X_ACCEL_BUFFERING", "E010"),
        _boolean("NDJSON_END_RECORD", "E011"),
        _timeout("STATEMENT_TIMEOUT", "E012"),
        _timeout("IDLE_IN_TRANSACTION_TIMEOUT", "E013"),
        _limit("MAX_ROWS", "E014"),
        _limit("MAX_CONCURRENT_EXPORTS", "E015"),
        _limit("MAX_CONCURRENT_EXPORTS_PER_USER", "E016"),
        _retry_after(),  # E017
        _xlsx_time_zone(),  # E018
        _int_range("XLSX_COMPRESS_LEVEL", "E019", 0, 9),
        _int_range("PARQUET_ROW_GROUP_ROWS", "E020", 1, 10_000_000),
        _time_zone(),  # E021
        _time_slice(),  # E022
        _int_range("PARQUET_ROW_GROUP_BYTES", "E023", 1, 2**31),
        _admin_export_permission(),  # E101
    ]
    return [error for error in errors if error is not None]


def _positive_int(name: str, check_id: str) -> Error | None:
    """E001, E002: a positive integer."""
    value = getattr(conf, name)
    if is_integer(value) and value >= 1:
        return None
    return _error(
        name,
        f"must be a positive integer, not {value!r}.",
        f"Remove STREAMEXPORT_{name} to use the default.",
        check_id,
    )


def _csv_delimiter() -> Error | None:
    """E003: one character, neither a quote nor a line break."""
    delimiter = conf.CSV_DELIMITER
    if isinstance(delimiter, str) and len(delimiter) == 1 and delimiter not in '"\r\n':
        return None
    return _error(
        "CSV_DELIMITER",
        f"must be one character other than a quote or a line break, not {delimiter!r}.",
        'Use "," (the default), ";" or "\\t".',
        "E003",
    )


def _formats() -> Error | None:
    """E004: a non-empty list of importable export formats with distinct names."""
    paths = conf.FORMATS
    if (
        not isinstance(paths, (list, tuple))
        or not paths
        or not all(isinstance(path, str) for path in paths)
    ):
        problem = f"must be a non-empty list of dotted paths, not {paths!r}."
    else:
        from django_streamexport.formats import default_format_classes, format_classes_by_name

        try:
            format_classes_by_name(default_format_classes())
        except ImproperlyConfigured as exc:
            problem = f"is invalid: {str(exc).rstrip('.')}."
        else:
            return None
    return _error(
        "FORMATS",
        problem,
        "List dotted paths of ExportFormat subclasses with distinct 'format' names.",
        "E004",
    )


def _database() -> Error | None:
    """E005: ``STREAMEXPORT_DATABASE`` is ``None`` or an alias in ``DATABASES``."""
    alias = conf.DATABASE
    if alias is None:
        return None
    if not isinstance(alias, str):
        problem = f"must be a database alias (a string) or None, not {alias!r}."
    elif alias not in settings.DATABASES:
        problem = f"names the database alias {alias!r}, which is not in DATABASES."
    else:
        return None
    return _error(
        "DATABASE",
        problem,
        f"Use one of: {', '.join(settings.DATABASES)}; or remove the setting.",
        "E005",
    )


def _boolean(name: str, check_id: str) -> Error | None:
    """E006, E007, E009, E010, E011: ``True`` or ``False``."""
    value = getattr(conf, name)
    if isinstance(value, bool):
        return None
    return _error(
        name,
        f"must be True or False, not {value!r}.",
        f"Use True or False, or remove STREAMEXPORT_{name} to use the default.",
        check_id,
    )


def _copy_mode() -> Error | None:
    """E008: ``False``, ``True`` or ``"require"``."""
    value = conf.COPY_MODE
    if isinstance(value, bool) or (isinstance(value, str) and value == "require"):
        return None
    return _error(
        "COPY_MODE",
        f'must be False, True or "require", not {value!r}.',
        "Use True to produce CSV with COPY where it gives the same file, "
        '"require" to refuse exports that COPY cannot produce, or False (the default).',
        "E008",
    )


def _timeout(name: str, check_id: str) -> Error | None:
    """E012, E013: ``None`` or seconds from 0 up to PostgreSQL's limit."""
    value = getattr(conf, name)
    if is_timeout(value):
        return None
    return _error(
        name,
        f"must be None or a number of seconds from 0 to {MAX_TIMEOUT_MS / 1000} "
        f"(PostgreSQL's limit), not {value!r}.",
        "Use a number of seconds; None or 0 keeps the database server's value.",
        check_id,
    )


def _time_slice() -> Error | None:
    """E022: seconds above 0, at most 1."""
    value = conf.TIME_SLICE
    if is_time_slice(value):
        return None
    return _error(
        "TIME_SLICE",
        f"must be a number of seconds above 0 and at most 1, not {value!r}.",
        "Use a few milliseconds, such as 0.002 (the default).",
        "E022",
    )


def _limit(name: str, check_id: str) -> Error | None:
    """E014, E015, E016: ``None`` or a non-negative integer (``None`` and 0: no limit)."""
    value = getattr(conf, name)
    if is_count(value):
        return None
    return _error(
        name,
        f"must be None or a non-negative integer, not {value!r}.",
        "Use a positive integer; None or 0 means no limit.",
        check_id,
    )


def _retry_after() -> Error | None:
    """E017: a non-negative integer (``Retry-After`` takes whole seconds)."""
    value = conf.RETRY_AFTER
    if is_integer(value) and value >= 0:
        return None
    return _error(
        "RETRY_AFTER",
        f"must be a non-negative integer (seconds), not {value!r}.",
        "Use whole seconds, as the Retry-After header requires, or remove "
        "STREAMEXPORT_RETRY_AFTER to use the default (10).",
        "E017",
    )


def _xlsx_time_zone() -> Error | None:
    """E018: ``None`` or a time zone name the ``zoneinfo`` database knows."""
    value = conf.XLSX_TIME_ZONE
    if value is None:
        return None
    if isinstance(value, str) and value:
        try:
            zoneinfo.ZoneInfo(value)
            return None
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    return _error(
        "XLSX_TIME_ZONE",
        f"must be None or a time zone name such as 'Europe/Paris', not {value!r}.",
        "Use an IANA time zone name, or remove the setting to use TIME_ZONE.",
        "E018",
    )


def _time_zone() -> Error | None:
    """E021: ``None``, ``"current"`` or a time zone name the ``zoneinfo`` database knows."""
    value = conf.TIME_ZONE
    if is_time_zone(value):
        return None
    return _error(
        "TIME_ZONE",
        f"must be None, \"current\" or a time zone name such as 'Europe/Berlin', not {value!r}.",
        'Use None (UTC, as the database returns datetimes), "current" (Django\'s current '
        "time zone) or an IANA time zone name.",
        "E021",
    )


def _int_range(name: str, check_id: str, low: int, high: int) -> Error | None:
    """E019, E020, E023: an integer from ``low`` to ``high``."""
    value = getattr(conf, name)
    if is_integer(value) and low <= value <= high:
        return None
    return _error(
        name,
        f"must be an integer from {low} to {high}, not {value!r}.",
        f"Remove STREAMEXPORT_{name} to use the default.",
        check_id,
    )


@register(Tags.compatibility)
def check_optional_formats(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Say which default formats are not offered because their library is missing (I001)."""
    from django_streamexport.conf import DEFAULT_FORMATS, OPTIONAL_FORMATS

    if tuple(conf.FORMATS) != DEFAULT_FORMATS:
        return []
    messages: list[CheckMessage] = []
    for path, module in OPTIONAL_FORMATS.items():
        if importlib.util.find_spec(module) is None:
            name = path.rsplit(".", 1)[-1].removesuffix("Format")
            messages.append(
                Info(
                    f"{name} exports are not offered: {module} is not installed.",
                    hint=f'pip install "django-streamexport[{name.lower()}]" to offer them.',
                    id="django_streamexport.I001",
                )
            )
    return messages


def _admin_export_permission() -> Error | None:
    """E101: ``"view"`` or ``"export"``."""
    value = conf.ADMIN_EXPORT_PERMISSION
    if isinstance(value, str) and value in ADMIN_EXPORT_PERMISSIONS:
        return None
    return _error(
        "ADMIN_EXPORT_PERMISSION",
        f"must be 'view' or 'export', not {value!r}.",
        "Remove the setting to require the view permission (the default).",
        "E101",
    )


@register(Tags.database, Tags.compatibility)
def check_databases(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn about databases on which exports would not stream (W001, W002)."""
    warnings: list[Warning] = []
    alias = conf.DATABASE
    aliases = (
        [alias]
        if isinstance(alias, str) and alias in settings.DATABASES
        else list(settings.DATABASES)
    )
    for alias in aliases:
        vendor = connections[alias].vendor
        if server_side_cursors_disabled(alias):
            warnings.append(
                Warning(
                    f"DATABASES[{alias!r}] sets DISABLE_SERVER_SIDE_CURSORS, so cursor-mode "
                    "exports from it are read by COPY where COPY can write them (CSV, with "
                    "psycopg 3) and refused otherwise (they would load every row into memory).",
                    hint='Use export_mode = "keyset" on export views for the other exports, or '
                    "export from an alias that connects directly or through a session-mode "
                    "pooler (STREAMEXPORT_DATABASE).",
                    id="django_streamexport.W001",
                )
            )
        elif vendor == "mysql":
            warnings.append(
                Warning(
                    f"DATABASES[{alias!r}] is MySQL/MariaDB, whose Python drivers load a whole "
                    "result into memory: exports from it stream the response but not the rows.",
                    hint="Export from PostgreSQL, or keep MySQL exports small.",
                    id="django_streamexport.W002",
                )
            )
    return warnings


def postgresql_driver() -> str | None:
    """Return ``"psycopg"`` or ``"psycopg2"``: the driver Django's PostgreSQL backend uses here.

    ``None`` when no database in ``DATABASES`` is PostgreSQL (by its backend's ``vendor``,
    so PostGIS counts) or no driver is installed.  Asks
    :func:`django_streamexport.postgresql.driver.driver_name`, which reports Django's
    choice: Django tries psycopg 3 first and falls back to psycopg2, so having psycopg2
    installed (or imported) does not mean it is used.
    """
    if not any(connections[alias].vendor == "postgresql" for alias in connections):
        return None
    from django_streamexport.postgresql.driver import driver_name

    return driver_name()


@register(Tags.compatibility)
def check_green_psycopg2(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when gevent patched the process but Django's psycopg2 would block it (W003).

    psycopg 3 cooperates with a patched process on its own; psycopg2 only through a wait
    callback (psycogreen).  Source: psycopg2 docs, "Support for coroutine libraries";
    psycopg 3 docs, "Gevent support".
    """
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("socket"):
        return []
    if postgresql_driver() != "psycopg2":
        return []
    # Imported by name: psycopg2 has no type stubs, and Django has imported it already.
    extensions = importlib.import_module("psycopg2.extensions")
    if extensions.get_wait_callback() is not None:
        return []
    return [
        Warning(
            "gevent has patched this process, but psycopg2 has no wait callback: every query "
            "blocks the whole worker, and a long export can get it killed.",
            hint="Call psycogreen.gevent.patch_psycopg() in each worker (see deploy/"
            "gunicorn.conf.py), or use psycopg 3, which cooperates with gevent natively.",
            id="django_streamexport.W003",
        )
    ]


@register(Tags.database, Tags.compatibility)
def check_gevent_persistent_connections(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn when gevent patched ``threading`` and a database keeps connections (W004).

    Django keeps one connection per thread, so per greenlet once gevent has patched
    ``threading`` (Django docs, ``ref/databases.txt``, "Persistent connections"), and a
    gevent worker runs each client connection in a greenlet of its own.  A connection kept
    past its request (``CONN_MAX_AGE`` ``None`` or > 0) is never reused by another client
    and stays open until garbage collection closes it: sessions pile up towards
    PostgreSQL's ``max_connections``.  Exports close theirs when they end
    (:func:`~django_streamexport.responses.close_greenlet_connection`); other views do not.
    """
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("threading"):
        return []
    warnings = []
    for alias in settings.DATABASES:
        max_age = connections[alias].settings_dict.get("CONN_MAX_AGE", 0)
        if max_age == 0:
            continue
        warnings.append(
            Warning(
                f"DATABASES[{alias!r}] sets CONN_MAX_AGE = {max_age!r} in a gevent worker: "
                "Django keeps a connection per greenlet, which no other client reuses, so "
                "kept connections stay open until garbage-collected and pile up towards the "
                "database's max_connections.",
                hint="Set CONN_MAX_AGE = 0 for gevent workers (exports close their connection "
                "when they end; other views do not). See deploy/README.md.",
                id="django_streamexport.W004",
            )
        )
    return warnings


def log_serving_warnings() -> list[Warning]:
    """Log the deployment warnings (W001-W004) when the app loads in a gevent server worker.

    Django runs system checks in ``manage.py`` commands, never under gunicorn, so a worker
    started without psycogreen would otherwise say nothing until exports stall.  When gevent
    has monkey-patched the process (a gevent worker loading the application, after its
    ``post_fork`` hook), the database checks run here once more and each warning is logged
    to the ``django_streamexport`` logger, which reaches the server's log.  Elsewhere
    (management commands, tests) this does nothing.  Returns the warnings logged.
    """
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is None or not gevent_monkey.is_module_patched("socket"):
        return []
    warnings = [
        *check_databases(),
        *check_green_psycopg2(),
        *check_gevent_persistent_connections(),
    ]
    for warning in warnings:
        logger.warning("%s: %s HINT: %s", warning.id, warning.msg, warning.hint)
    return warnings
