"""The one psycopg probe: which driver Django uses, the psycopg 3 pieces, the fast loader."""

from __future__ import annotations

import datetime

import pytest
from django.db import connections
from django.db.backends.postgresql import psycopg_any
from django.test import override_settings

from django_streamexport.postgresql.driver import (
    driver_name,
    is_psycopg3,
    psycopg_internals,
    use_fast_loaders,
)

needs_psycopg3 = pytest.mark.skipif(
    not psycopg_any.is_psycopg3, reason="Django uses psycopg2 in this environment"
)

#: The namespace's attributes and where they come from in psycopg 3.
INTERNALS = [
    ("errors", "psycopg", "errors"),
    ("pq", "psycopg", "pq"),
    ("Transformer", "psycopg.adapt", "Transformer"),
    ("send", "psycopg.generators", "send"),
    ("fetch_many", "psycopg.generators", "fetch_many"),
    ("Wait", "psycopg.waiting", "Wait"),
]


def test_driver_name_is_the_driver_django_uses():
    """Django's backend imports psycopg 3 when it can; having psycopg2 installed means nothing."""
    connection = connections["default"]
    assert driver_name() == connection.Database.__name__  # the module the backend connects with
    assert driver_name() == ("psycopg" if psycopg_any.is_psycopg3 else "psycopg2")
    assert is_psycopg3() is bool(psycopg_any.is_psycopg3)


@needs_psycopg3
@pytest.mark.parametrize(("attribute", "module", "name"), INTERNALS)
def test_psycopg_internals_has_each_piece(attribute, module, name):
    import importlib

    internals = psycopg_internals()
    assert internals is not None
    assert getattr(internals, attribute) is getattr(importlib.import_module(module), name)


@needs_psycopg3
def test_psycopg_internals_has_nothing_else():
    assert sorted(vars(psycopg_internals())) == sorted(attribute for attribute, *_ in INTERNALS)


@pytest.mark.skipif(psycopg_any.is_psycopg3, reason="psycopg2 sessions only")
def test_psycopg_internals_is_none_under_psycopg2():  # pragma: no cover - psycopg2 sessions
    assert psycopg_internals() is None


# --- use_fast_loaders -----------------------------------------------------------------------

INSTANT = datetime.datetime(2013, 1, 1, 5, 30, 15, 123456, tzinfo=datetime.timezone.utc)


def timestamptz_loader(adapters):
    from psycopg import postgres, pq

    return adapters.get_loader(postgres.types["timestamptz"].oid, pq.Format.TEXT)


@needs_psycopg3
@pytest.mark.django_db(databases=["default"])
def test_use_fast_loaders_registers_psycopg_loader_on_the_cursor_only():
    connection = connections["default"]
    connection.ensure_connection()
    assert connection.timezone_name == "UTC"  # USE_TZ: the session runs in UTC
    raw_connection = connection.connection
    django_loader = timestamptz_loader(raw_connection.adapters)
    assert issubclass(django_loader, psycopg_any.BaseTzLoader)
    with connection.cursor() as cursor:
        use_fast_loaders(connection, cursor)
        loader = timestamptz_loader(cursor.cursor.adapters)
        assert loader.__name__ == "TimestamptzLoader"
        assert not issubclass(loader, psycopg_any.BaseTzLoader)
        # The same instant, in UTC, as Django's loader gives.
        cursor.execute("SELECT %s::timestamptz", [INSTANT])
        value = cursor.fetchone()[0]
        assert value == INSTANT
        assert value.utcoffset() == datetime.timedelta(0)
        assert value.isoformat() == INSTANT.isoformat()
    # The connection, and its next cursor, keep Django's loader.
    assert timestamptz_loader(raw_connection.adapters) is django_loader
    with connection.cursor() as cursor:
        assert timestamptz_loader(cursor.cursor.adapters) is django_loader
        cursor.execute("SELECT %s::timestamptz", [INSTANT])
        assert cursor.fetchone()[0] == INSTANT


@needs_psycopg3
@pytest.mark.django_db(databases=["default"])
def test_use_fast_loaders_does_nothing_without_use_tz():
    connection = connections["default"]
    with override_settings(USE_TZ=False):
        with connection.cursor() as cursor:
            before = timestamptz_loader(cursor.cursor.adapters)
            use_fast_loaders(connection, cursor)
            assert timestamptz_loader(cursor.cursor.adapters) is before


@pytest.mark.django_db(databases=["sqlite"])
def test_use_fast_loaders_does_nothing_on_sqlite():
    connection = connections["sqlite"]
    with connection.cursor() as cursor:
        use_fast_loaders(connection, cursor)  # no adapters to change; must not fail
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
