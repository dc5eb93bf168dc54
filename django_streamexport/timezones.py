"""The time zone an export writes datetimes in: ``STREAMEXPORT_TIME_ZONE`` and ``time_zone``.

A value names the zone: ``None`` writes datetimes as the database returns them (UTC under
``USE_TZ = True``: the behaviour before the option existed); ``"current"`` is Django's
current time zone when the export is planned (``timezone.activate()``, by a middleware for
the request's user; else ``TIME_ZONE``); any other string is an IANA zone name
(``"Europe/Berlin"``).  The plan (:func:`~django_streamexport.plan.build_plan`) also takes
a ``tzinfo`` (a ``zoneinfo.ZoneInfo``, ``datetime.timezone.utc``, a fixed offset).

Text formats write an aware datetime as ISO 8601 with the zone's offset at that instant
(:func:`~django_streamexport.formats.base.zoned_datetime_text`:
``2013-01-01T06:30:15.123000+01:00``), so the value still
names the same instant; PostgreSQL spells the same text for database formatting and COPY
mode (:mod:`django_streamexport.postgresql.text`).
"""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

__all__ = ["CURRENT", "is_time_zone", "resolve_time_zone"]

#: The value that names Django's current time zone.
CURRENT = "current"


def _zone_by_name(name: str) -> datetime.tzinfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # ValueError: not a relative path
        return None


def is_time_zone(value: Any) -> bool:
    """Say whether ``value`` is a valid ``STREAMEXPORT_TIME_ZONE``: ``None``, ``"current"``
    or a zone name ``zoneinfo`` knows."""
    if value is None or value == CURRENT:
        return True
    return isinstance(value, str) and bool(value) and _zone_by_name(value) is not None


def resolve_time_zone(value: Any, *, name: str = "time_zone") -> datetime.tzinfo | None:
    """Return the zone ``value`` names, or ``None`` (write datetimes as the database returns them).

    ``"current"`` is read now: ``timezone.get_current_timezone()``.  Raises
    ``ImproperlyConfigured`` naming ``name`` for a string ``zoneinfo`` does not know or
    a value that is neither a string nor a ``tzinfo``.
    """
    if value is None or isinstance(value, datetime.tzinfo):
        return value
    if value == CURRENT:
        return timezone.get_current_timezone()
    zone = _zone_by_name(value) if isinstance(value, str) and value else None
    if zone is None:
        raise ImproperlyConfigured(
            f'{name} must be None, "current", a time zone name such as "Europe/Berlin" '
            f"or a tzinfo, not {value!r}."
        )
    return zone
