"""System checks for settings and deployments that would break streaming.

Ids are stable; each is documented in the README's "System checks" section.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from django_streamexport.conf import conf

logger = logging.getLogger("django_streamexport")


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Check the ``STREAMEXPORT_*`` settings' types and values (E001-E005)."""
    errors: list[Error] = []
    for name, value in (("CHUNK_SIZE", conf.CHUNK_SIZE), ("BUFFER_SIZE", conf.BUFFER_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(
                Error(
                    f"STREAMEXPORT_{name} must be a positive integer, not {value!r}.",
                    hint=f"Remove STREAMEXPORT_{name} to use the default.",
                    id="django_streamexport.E001"
                    if name == "CHUNK_SIZE"
                    else "django_streamexport.E002",
                )
            )
    delimiter = conf.CSV_DELIMITER
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        errors.append(
            Error(
                f"STREAMEXPORT_CSV_DELIMITER must be one character other than a quote or a "
                f"line break, not {delimiter!r}.",
                hint='Use "," (the default), ";" or "\\t".',
                id="django_streamexport.E003",
            )
        )
    try:
        from django_streamexport.formats import default_format_classes, format_classes_by_name

        format_classes_by_name(default_format_classes())
    except ImproperlyConfigured as exc:
        errors.append(
            Error(
                f"STREAMEXPORT_FORMATS is invalid: {exc}",
                hint="List dotted paths of ExportFormat subclasses with distinct 'format' names.",
                id="django_streamexport.E004",
            )
        )
    alias = conf.DATABASE
    if alias is not None and alias not in settings.DATABASES:
        errors.append(
            Error(
                f"STREAMEXPORT_DATABASE names the database alias {alias!r}, which is not in "
                "DATABASES.",
                hint=f"Use one of: {', '.join(settings.DATABASES)}; or remove the setting.",
                id="django_streamexport.E005",
            )
        )
    return errors


@register(Tags.database, Tags.compatibility)
def check_databases(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Warning]:
    """Warn about databases on which exports would not stream (W001, W002)."""
    warnings: list[Warning] = []
    aliases = [conf.DATABASE] if conf.DATABASE in settings.DATABASES else list(settings.DATABASES)
    for alias in aliases:
        connection = connections[alias]
        settings_dict, vendor = connection.settings_dict, connection.vendor
        if vendor == "postgresql" and settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
            warnings.append(
                Warning(
                    f"DATABASES[{alias!r}] sets DISABLE_SERVER_SIDE_CURSORS, so cursor-mode "
                    "exports from it are refused (they would load every row into memory).",
                    hint='Use export_mode = "keyset" on export views, or export from an alias '
                    "that connects directly or through a session-mode pooler "
                    "(STREAMEXPORT_DATABASE).",
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

    ``None`` when no database in ``DATABASES`` is PostgreSQL or no driver is installed.
    Django tries psycopg 3 first and falls back to psycopg2
    (``django/db/backends/postgresql/psycopg_any.py``), so having psycopg2 installed (or
    imported) does not mean it is used.
    """
    databases: dict[str, Any] = settings.DATABASES
    if not any("postgresql" in db.get("ENGINE", "") for db in databases.values()):
        return None
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3
    except ImportError:
        return None
    return "psycopg" if is_psycopg3 else "psycopg2"


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


def log_serving_warnings() -> list[Warning]:
    """Log the deployment warnings (W001-W003) when the app loads in a gevent server worker.

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
    warnings = [*check_databases(), *check_green_psycopg2()]
    for warning in warnings:
        logger.warning("%s: %s HINT: %s", warning.id, warning.msg, warning.hint)
    return warnings
