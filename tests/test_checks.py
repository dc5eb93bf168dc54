"""One test per system check id."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

from django_streamexport import checks as streamexport_checks
from django_streamexport.checks import (
    check_databases,
    check_green_psycopg2,
    check_settings,
    log_serving_warnings,
)


def ids(messages):
    return [message.id for message in messages]


def test_default_settings_pass():
    assert check_settings() == []
    assert check_databases() == []


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("STREAMEXPORT_CHUNK_SIZE", 0, "django_streamexport.E001"),
        ("STREAMEXPORT_CHUNK_SIZE", "2000", "django_streamexport.E001"),
        ("STREAMEXPORT_BUFFER_SIZE", -1, "django_streamexport.E002"),
        ("STREAMEXPORT_CSV_DELIMITER", ";;", "django_streamexport.E003"),
        ("STREAMEXPORT_CSV_DELIMITER", '"', "django_streamexport.E003"),
        ("STREAMEXPORT_FORMATS", ["no.such.Format"], "django_streamexport.E004"),
        (
            "STREAMEXPORT_FORMATS",
            ["django_streamexport.formats.csv.CSVFormat"] * 2,
            "django_streamexport.E004",
        ),
        ("STREAMEXPORT_DATABASE", "replica", "django_streamexport.E005"),
    ],
)
def test_setting_errors(setting, value, check_id):
    with override_settings(**{setting: value}):
        messages = check_settings()
    assert ids(messages) == [check_id]
    assert setting in messages[0].msg
    assert messages[0].hint


def test_w001_disable_server_side_cursors(monkeypatch):
    from django.db import connections

    monkeypatch.setitem(connections["default"].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    with override_settings(STREAMEXPORT_DATABASE="default"):
        assert ids(check_databases()) == ["django_streamexport.W001"]


def test_w002_mysql(monkeypatch):
    from django.db import connections

    monkeypatch.setattr(connections["sqlite"], "vendor", "mysql")
    with override_settings(STREAMEXPORT_DATABASE="sqlite"):
        assert ids(check_databases()) == ["django_streamexport.W002"]


def fake_gevent_patch(monkeypatch):
    """Make the checks believe gevent has monkey-patched this process."""
    import sys
    import types

    fake_monkey = types.SimpleNamespace(is_module_patched=lambda name: name == "socket")
    monkeypatch.setitem(sys.modules, "gevent.monkey", fake_monkey)


def test_postgresql_driver_is_djangos_choice():
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    # Both drivers are installed in the test environment; Django prefers psycopg 3.
    assert streamexport_checks.postgresql_driver() == ("psycopg" if is_psycopg3 else "psycopg2")


def test_w003_gevent_without_wait_callback(monkeypatch):
    import psycopg2.extensions

    fake_gevent_patch(monkeypatch)
    monkeypatch.setattr(streamexport_checks, "postgresql_driver", lambda: "psycopg2")
    assert psycopg2.extensions.get_wait_callback() is None
    assert ids(check_green_psycopg2()) == ["django_streamexport.W003"]
    psycopg2.extensions.set_wait_callback(lambda conn: None)
    try:
        assert check_green_psycopg2() == []
    finally:
        psycopg2.extensions.set_wait_callback(None)


def test_w003_not_for_psycopg3(monkeypatch):
    """psycopg 3 cooperates with gevent without a wait callback (psycopg docs, Gevent support)."""
    fake_gevent_patch(monkeypatch)
    monkeypatch.setattr(streamexport_checks, "postgresql_driver", lambda: "psycopg")
    assert check_green_psycopg2() == []


def test_w003_not_without_gevent(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "gevent.monkey", raising=False)
    monkeypatch.setattr(streamexport_checks, "postgresql_driver", lambda: "psycopg2")
    assert check_green_psycopg2() == []


def test_serving_warnings_are_logged_in_a_gevent_worker(monkeypatch, caplog):
    """The real-gunicorn version of this is tests/test_deploy.py::test_start_up_warnings."""
    from django.db import connections

    assert log_serving_warnings() == []  # not gevent-patched: nothing, even with problems
    fake_gevent_patch(monkeypatch)
    monkeypatch.setattr(streamexport_checks, "postgresql_driver", lambda: "psycopg2")
    monkeypatch.setitem(connections["default"].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    with override_settings(STREAMEXPORT_DATABASE="default"), caplog.at_level("WARNING"):
        logged = log_serving_warnings()
    assert ids(logged) == ["django_streamexport.W001", "django_streamexport.W003"]
    assert (
        "django_streamexport.W001: DATABASES['default'] sets DISABLE_SERVER_SIDE_CURSORS"
        in caplog.text
    )
    assert "django_streamexport.W003: gevent has patched this process" in caplog.text


def test_checks_are_registered():
    registered = checks.registry.registry.get_checks()
    assert check_settings in registered
    assert check_databases in registered
    assert check_green_psycopg2 in registered
