"""One test per system check id."""

from __future__ import annotations

import pytest
from django.core import checks
from django.test import override_settings

from django_streamexport import checks as streamexport_checks
from django_streamexport.checks import (
    check_databases,
    check_gevent_persistent_connections,
    check_green_psycopg2,
    check_settings,
    log_serving_warnings,
)
from django_streamexport.conf import Settings

CSV = "django_streamexport.formats.csv.CSVFormat"
NDJSON = "django_streamexport.formats.ndjson.NDJSONFormat"

#: Each setting and the id of the check that validates it.
SETTING_IDS = {
    "STREAMEXPORT_CHUNK_SIZE": "django_streamexport.E001",
    "STREAMEXPORT_BUFFER_SIZE": "django_streamexport.E002",
    "STREAMEXPORT_CSV_DELIMITER": "django_streamexport.E003",
    "STREAMEXPORT_FORMATS": "django_streamexport.E004",
    "STREAMEXPORT_DATABASE": "django_streamexport.E005",
    "STREAMEXPORT_CSV_BOM": "django_streamexport.E006",
    "STREAMEXPORT_CSV_ESCAPE_FORMULAS": "django_streamexport.E007",
    "STREAMEXPORT_COPY_MODE": "django_streamexport.E008",
    "STREAMEXPORT_DATABASE_FORMATTING": "django_streamexport.E009",
    "STREAMEXPORT_X_ACCEL_BUFFERING": "django_streamexport.E010",
    "STREAMEXPORT_NDJSON_END_RECORD": "django_streamexport.E011",
    "STREAMEXPORT_STATEMENT_TIMEOUT": "django_streamexport.E012",
    "STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT": "django_streamexport.E013",
    "STREAMEXPORT_MAX_ROWS": "django_streamexport.E014",
    "STREAMEXPORT_MAX_CONCURRENT_EXPORTS": "django_streamexport.E015",
    "STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER": "django_streamexport.E016",
    "STREAMEXPORT_RETRY_AFTER": "django_streamexport.E017",
    "STREAMEXPORT_XLSX_TIME_ZONE": "django_streamexport.E018",
    "STREAMEXPORT_XLSX_COMPRESS_LEVEL": "django_streamexport.E019",
    "STREAMEXPORT_PARQUET_ROW_GROUP_ROWS": "django_streamexport.E020",
    "STREAMEXPORT_PARQUET_ROW_GROUP_BYTES": "django_streamexport.E023",
    "STREAMEXPORT_TIME_ZONE": "django_streamexport.E021",
    "STREAMEXPORT_TIME_SLICE": "django_streamexport.E022",
    "STREAMEXPORT_ADMIN_EXPORT_PERMISSION": "django_streamexport.E101",
}

#: Bad values for each setting.
BAD_VALUES = {
    "STREAMEXPORT_CHUNK_SIZE": [0, -1, "2000", 2000.0, True, None],
    "STREAMEXPORT_BUFFER_SIZE": [0, -1, "65536", True, None],
    "STREAMEXPORT_CSV_DELIMITER": [";;", "", '"', "\n", "\r", 44, None],
    "STREAMEXPORT_FORMATS": [
        ["no.such.Format"],
        [CSV, CSV],
        ["django_streamexport.conf.Settings"],  # importable, not an ExportFormat
        CSV,  # a string, not a list of them
        [],
        [42],
        None,
    ],
    "STREAMEXPORT_DATABASE": ["replica", "", ["default"], 0],
    "STREAMEXPORT_CSV_BOM": ["yes", 1, None],
    "STREAMEXPORT_CSV_ESCAPE_FORMULAS": ["False", 0, None],
    "STREAMEXPORT_COPY_MODE": ["required", "True", 1, 0, None],
    "STREAMEXPORT_DATABASE_FORMATTING": ["off", 0],
    "STREAMEXPORT_X_ACCEL_BUFFERING": ["no", None],
    "STREAMEXPORT_NDJSON_END_RECORD": [1, "true"],
    "STREAMEXPORT_STATEMENT_TIMEOUT": [
        -1,
        -0.5,
        "300",
        True,
        float("nan"),
        float("inf"),
        2_147_484,  # past PostgreSQL's limit (2147483647 ms)
        10**400,
    ],
    "STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT": [-1, "120", False, float("inf")],
    "STREAMEXPORT_MAX_ROWS": [-1, 1.5, "100", True],
    "STREAMEXPORT_MAX_CONCURRENT_EXPORTS": [-1, 2.0, True],
    "STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER": [-1, "1", False],
    "STREAMEXPORT_RETRY_AFTER": [-1, 1.5, "10", None, True],
    "STREAMEXPORT_XLSX_TIME_ZONE": ["Mars/Olympus", "", 0, "../etc/passwd"],
    "STREAMEXPORT_XLSX_COMPRESS_LEVEL": [-1, 10, 1.0, "1", True, None],
    "STREAMEXPORT_PARQUET_ROW_GROUP_ROWS": [0, -5, 10_000_001, 1000.0, None],
    "STREAMEXPORT_PARQUET_ROW_GROUP_BYTES": [0, -1, 2**31 + 1, 65536.0, "1MB", None, True],
    "STREAMEXPORT_TIME_ZONE": ["Mars/Olympus", "", "Current", "../etc/passwd", 0, True, ["UTC"]],
    "STREAMEXPORT_TIME_SLICE": [0, 0.0, -0.005, 1.5, "0.005", None, True, float("nan")],
    "STREAMEXPORT_ADMIN_EXPORT_PERMISSION": ["change", "View", "", None, True],
}

#: Values at the edges of each rule, which pass.
GOOD_VALUES = {
    "STREAMEXPORT_CHUNK_SIZE": [1, 10**6],
    "STREAMEXPORT_BUFFER_SIZE": [1],
    "STREAMEXPORT_CSV_DELIMITER": [";", "\t", "|"],
    "STREAMEXPORT_FORMATS": [[CSV], (NDJSON, CSV)],
    "STREAMEXPORT_DATABASE": [None, "default", "sqlite"],
    "STREAMEXPORT_CSV_BOM": [True, False],
    "STREAMEXPORT_CSV_ESCAPE_FORMULAS": [True, False],
    "STREAMEXPORT_COPY_MODE": [False, True, "require"],
    "STREAMEXPORT_DATABASE_FORMATTING": [True, False],
    "STREAMEXPORT_X_ACCEL_BUFFERING": [True, False],
    "STREAMEXPORT_NDJSON_END_RECORD": [True, False],
    "STREAMEXPORT_STATEMENT_TIMEOUT": [None, 0, 0.001, 30, 2.5, 2_147_483, 2_147_483.647],
    "STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT": [None, 0, 0.0, 600],
    "STREAMEXPORT_MAX_ROWS": [None, 0, 1, 10**9],
    "STREAMEXPORT_MAX_CONCURRENT_EXPORTS": [None, 0, 1],
    "STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER": [None, 0, 2],
    "STREAMEXPORT_RETRY_AFTER": [0, 1, 3600],
    "STREAMEXPORT_XLSX_TIME_ZONE": [None, "UTC", "Europe/Paris", "America/New_York"],
    "STREAMEXPORT_XLSX_COMPRESS_LEVEL": [0, 1, 9],
    "STREAMEXPORT_PARQUET_ROW_GROUP_ROWS": [1, 10_000_000],
    "STREAMEXPORT_PARQUET_ROW_GROUP_BYTES": [1, 2 * 1024 * 1024, 2**31],
    "STREAMEXPORT_TIME_ZONE": [None, "current", "UTC", "Europe/Berlin", "Asia/Kolkata"],
    "STREAMEXPORT_TIME_SLICE": [1e-6, 0.005, 1, 1.0],
    "STREAMEXPORT_ADMIN_EXPORT_PERMISSION": ["view", "export"],
}


def ids(messages):
    return [message.id for message in messages]


def test_tables_cover_every_setting():
    """A setting added to conf.py without a check (and a test) fails here."""
    names = {
        f"STREAMEXPORT_{name}"
        for name, value in vars(Settings).items()
        if isinstance(value, property)
    }
    assert set(SETTING_IDS) == names
    assert set(BAD_VALUES) == names
    assert set(GOOD_VALUES) == names


def test_default_settings_pass():
    assert check_settings() == []
    assert check_databases() == []


def cases(table):
    """Parametrise over ``(setting, value)``, the test ids starting with the check id."""
    return [
        pytest.param(
            setting, value, id=f"{SETTING_IDS[setting][-4:]}-{setting[13:]}-{repr(value)[:30]}"
        )
        for setting, values in table.items()
        for value in values
    ]


@pytest.mark.parametrize(("setting", "value"), cases(BAD_VALUES))
def test_setting_errors(setting, value):
    with override_settings(**{setting: value}):
        messages = check_settings()
    assert ids(messages) == [SETTING_IDS[setting]]
    (message,) = messages
    assert message.level == checks.ERROR
    assert message.msg.startswith(f"{setting} ")
    assert message.msg.endswith(".")
    if setting != "STREAMEXPORT_FORMATS" or not isinstance(value, list) or not value:
        assert repr(value) in message.msg
    assert message.hint


@pytest.mark.parametrize(("setting", "value"), cases(GOOD_VALUES))
def test_setting_values_that_pass(setting, value):
    with override_settings(**{setting: value}):
        assert check_settings() == []


@pytest.mark.parametrize("setting", sorted(SETTING_IDS))
def test_anything_else_fails(setting):
    with override_settings(**{setting: object()}):
        assert ids(check_settings()) == [SETTING_IDS[setting]]


def test_errors_come_in_id_order():
    bad = {setting: values[0] for setting, values in BAD_VALUES.items()}
    with override_settings(**bad):
        assert ids(check_settings()) == sorted(SETTING_IDS.values())


def test_e101_keeps_its_message():
    with override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="change"):
        (message,) = check_settings()
    assert (
        message.msg
        == "STREAMEXPORT_ADMIN_EXPORT_PERMISSION must be 'view' or 'export', not 'change'."
    )
    assert message.hint == "Remove the setting to require the view permission (the default)."


def test_e101_is_reported_once_with_several_export_admins():
    from django.contrib import admin

    from django_streamexport.admin import ExportAdminMixin

    export_admins = [a for a in admin.site._registry.values() if isinstance(a, ExportAdminMixin)]
    assert len(export_admins) >= 2  # tests.testapp's RecordAdmin and flights' FlightAdmin
    with override_settings(STREAMEXPORT_ADMIN_EXPORT_PERMISSION="change"):
        messages = checks.run_checks()
    e101 = [message for message in messages if message.id == "django_streamexport.E101"]
    assert len(e101) == 1
    assert e101[0].obj is None


def test_project_has_no_streamexport_errors():
    """With tests/settings.py, all registered checks together raise no error of ours."""
    messages = checks.run_checks()
    assert [
        message
        for message in messages
        if message.id.startswith("django_streamexport.") and message.level >= checks.ERROR
    ] == []


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


def fake_gevent_patch(monkeypatch, modules=("socket",)):
    """Make the checks believe gevent has monkey-patched ``modules`` in this process."""
    import sys
    import types

    fake_monkey = types.SimpleNamespace(is_module_patched=lambda name: name in modules)
    monkeypatch.setitem(sys.modules, "gevent.monkey", fake_monkey)


def test_postgresql_driver_is_djangos_choice():
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    from django_streamexport.postgresql.driver import driver_name

    # Both drivers are installed in the test environment; Django prefers psycopg 3.
    assert streamexport_checks.postgresql_driver() == ("psycopg" if is_psycopg3 else "psycopg2")
    assert streamexport_checks.postgresql_driver() == driver_name()


def test_postgresql_driver_none_without_postgresql(monkeypatch):
    from django.db import connections

    monkeypatch.setattr(connections["default"], "vendor", "sqlite")
    assert streamexport_checks.postgresql_driver() is None


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


@pytest.mark.parametrize(("max_age", "warned"), [(60, True), (None, True), (0, False)])
def test_w004_persistent_connections_under_gevent(monkeypatch, max_age, warned):
    from django.db import connections

    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", max_age)
    assert check_gevent_persistent_connections() == []  # not gevent-patched
    fake_gevent_patch(monkeypatch, modules=("socket", "threading"))
    messages = check_gevent_persistent_connections()
    assert ids(messages) == (["django_streamexport.W004"] if warned else [])
    if warned:
        assert messages[0].msg.startswith(
            f"DATABASES['default'] sets CONN_MAX_AGE = {max_age!r} in a gevent worker"
        )
    fake_gevent_patch(monkeypatch, modules=("socket",))  # threading left alone: per thread
    assert check_gevent_persistent_connections() == []


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
    assert check_gevent_persistent_connections in registered
