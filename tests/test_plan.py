"""build_plan(): settings resolved once, every option validated, the format and file name.

Building a plan runs no query (it reads settings and connection settings only), so
these tests need no database; the DISABLE_SERVER_SIDE_CURSORS cases change the real
connection's settings for the length of one test.
"""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from django_streamexport.columns import resolve_columns
from django_streamexport.exceptions import UnknownFormat
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.plan import ExportPlan, build_plan
from tests.testapp.models import Country, Record

FIELDS = ["id", "title", "author__name"]


def plan(queryset=None, **options):
    queryset = Record.objects.all() if queryset is None else queryset
    options.setdefault("fields", FIELDS)
    return build_plan(queryset, **options)


# --- settings: None means the setting, an explicit value wins ---------------------------

#: (plan field, build_plan keyword, setting, setting value, explicit value, expected plan
#: value with the setting, expected plan value with the explicit value)
SETTINGS_CASES = [
    ("chunk_size", "STREAMEXPORT_CHUNK_SIZE", 123, 7, 123, 7),
    ("buffer_size", "STREAMEXPORT_BUFFER_SIZE", 4096, 100, 4096, 100),
    ("max_rows", "STREAMEXPORT_MAX_ROWS", 50, 9, 50, 9),
    ("max_rows", "STREAMEXPORT_MAX_ROWS", 50, 0, 50, None),  # explicit 0: no limit
    ("max_rows", "STREAMEXPORT_MAX_ROWS", 0, 9, None, 9),  # setting 0: no limit
    ("copy_mode", "STREAMEXPORT_COPY_MODE", "require", False, "require", False),
    ("copy_mode", "STREAMEXPORT_COPY_MODE", True, "require", True, "require"),
    ("statement_timeout", "STREAMEXPORT_STATEMENT_TIMEOUT", 2.5, 1, 2.5, 1),
    ("statement_timeout", "STREAMEXPORT_STATEMENT_TIMEOUT", 2.5, 0, 2.5, None),
    ("statement_timeout", "STREAMEXPORT_STATEMENT_TIMEOUT", 0, 3, None, 3),
    ("statement_timeout", "STREAMEXPORT_STATEMENT_TIMEOUT", None, 3, None, 3),
    (
        "idle_in_transaction_timeout",
        "STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT",
        30,
        0,
        30,
        None,
    ),
    ("database_formatting", "STREAMEXPORT_DATABASE_FORMATTING", False, True, False, True),
    ("using", "STREAMEXPORT_DATABASE", "sqlite", "default", "sqlite", "default"),
    (
        "time_zone",
        "STREAMEXPORT_TIME_ZONE",
        "Asia/Kolkata",
        "Europe/Berlin",
        zoneinfo.ZoneInfo("Asia/Kolkata"),
        zoneinfo.ZoneInfo("Europe/Berlin"),
    ),
    ("time_zone", "STREAMEXPORT_TIME_ZONE", None, "UTC", None, zoneinfo.ZoneInfo("UTC")),
]


@pytest.mark.parametrize(
    ("name", "setting", "setting_value", "explicit", "from_setting", "from_explicit"),
    SETTINGS_CASES,
    ids=[f"{case[0]}-{case[2]!r}-{case[3]!r}" for case in SETTINGS_CASES],
)
def test_none_means_the_setting_and_an_explicit_value_wins(
    name, setting, setting_value, explicit, from_setting, from_explicit
):
    with override_settings(**{setting: setting_value}):
        assert getattr(plan(), name) == from_setting
        assert getattr(plan(**{name: None}), name) == from_setting
        assert getattr(plan(**{name: explicit}), name) == from_explicit


def test_defaults_without_settings():
    built = plan()
    assert built.chunk_size == 2000
    assert built.buffer_size == 64 * 1024
    assert built.max_rows is None
    assert built.copy_mode is True  # CSV through COPY where it gives the same bytes
    assert built.statement_timeout == 300
    assert built.idle_in_transaction_timeout == 120
    assert built.database_formatting is True
    assert built.prefetch is True
    assert built.mode == "cursor"
    assert built.keyset_key == "pk"
    assert built.using == "default"  # the queryset's database (the routers)
    assert built.user is None
    assert built.time_zone is None
    assert built.format.time_zone is None
    assert len(built.export_id) == 12


def test_the_queryset_database_is_used_when_no_alias_is_set():
    assert plan(Record.objects.using("sqlite")).using == "sqlite"


def test_settings_are_resolved_once_when_the_plan_is_built():
    """A plan keeps what the settings said when it was built; it is read-only."""
    with override_settings(
        STREAMEXPORT_CHUNK_SIZE=11,
        STREAMEXPORT_BUFFER_SIZE=222,
        STREAMEXPORT_MAX_ROWS=33,
        STREAMEXPORT_COPY_MODE=False,
        STREAMEXPORT_STATEMENT_TIMEOUT=4.5,
        STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT=6,
        STREAMEXPORT_DATABASE="sqlite",
        STREAMEXPORT_DATABASE_FORMATTING=False,
    ):
        built = plan()
    assert (built.chunk_size, built.buffer_size, built.max_rows) == (11, 222, 33)
    assert built.copy_mode is False
    assert (built.statement_timeout, built.idle_in_transaction_timeout) == (4.5, 6)
    assert built.using == "sqlite"
    assert built.database_formatting is False
    with pytest.raises(AttributeError):
        built.chunk_size = 5  # type: ignore[misc]


# --- validation: ImproperlyConfigured naming the option -----------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chunk_size": 0}, "chunk_size must be a positive integer"),
        ({"chunk_size": -1}, "chunk_size must be a positive integer"),
        ({"chunk_size": True}, "chunk_size must be a positive integer"),
        ({"chunk_size": "10"}, "chunk_size must be a positive integer"),
        ({"chunk_size": 2.0}, "chunk_size must be a positive integer"),
        ({"buffer_size": 0}, "buffer_size must be a positive integer"),
        ({"buffer_size": -5}, "buffer_size must be a positive integer"),
        ({"buffer_size": False}, "buffer_size must be a positive integer"),
        ({"buffer_size": "64k"}, "buffer_size must be a positive integer"),
        ({"mode": "pages"}, "export mode must be"),
        ({"mode": "KEYSET"}, "export mode must be"),
        ({"copy_mode": 1}, "copy_mode must be"),
        ({"copy_mode": 0}, "copy_mode must be"),
        ({"copy_mode": "yes"}, "copy_mode must be"),
        ({"max_rows": -1}, "max_rows must be a non-negative number"),
        ({"max_rows": True}, "max_rows must be a non-negative number"),
        ({"max_rows": 1.5}, "max_rows must be a non-negative number"),
        ({"max_rows": "10"}, "max_rows must be a non-negative number"),
        ({"max_rows": 0.0}, "max_rows must be a non-negative number"),
        ({"statement_timeout": -0.5}, "statement_timeout must be a non-negative number"),
        ({"statement_timeout": "5"}, "statement_timeout must be a non-negative number"),
        (
            {"idle_in_transaction_timeout": -1},
            "idle_in_transaction_timeout must be a non-negative number",
        ),
        ({"fields": ["id", "nope"]}, "Cannot export 'nope' from testapp.Record"),
        ({"fields": ["author__nope"]}, "Cannot export 'author__nope'"),
        ({"fields": ["title__name"]}, "is not a relation"),
        ({"fields": ["tags__name"]}, "follows the to-many relation 'tags'"),
        ({"fields": ["id", "id"]}, "declared twice"),
        ({"fields": []}, "at least one field"),
        ({"fields": None}, "needs fields"),
        ({"using": "replica"}, "'replica' is not in DATABASES"),
        ({"mode": "keyset", "keyset_key": "title"}, "must be unique and not null"),
        ({"mode": "keyset", "keyset_key": "author"}, "must be unique and not null"),
        ({"mode": "keyset", "keyset_key": "author__name"}, "need a key that is a field"),
        ({"mode": "keyset", "keyset_key": "nope"}, "need a key that is a field"),
        ({"format_classes": []}, "No export formats are offered"),
        ({"time_zone": "Mars/Olympus"}, 'time_zone must be None, "current", a time zone name'),
        ({"time_zone": ""}, "time_zone must be None"),
        ({"time_zone": "../etc/passwd"}, "time_zone must be None"),
        ({"time_zone": 1}, "time_zone must be None"),
    ],
    ids=lambda value: repr(value) if isinstance(value, dict) else "",
)
def test_invalid_options_are_refused_naming_the_option(options, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        plan(**options)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("STREAMEXPORT_CHUNK_SIZE", 0, "chunk_size"),
        ("STREAMEXPORT_BUFFER_SIZE", -1, "buffer_size"),
        ("STREAMEXPORT_MAX_ROWS", -3, "max_rows"),
        ("STREAMEXPORT_COPY_MODE", "yes", "copy_mode"),
        ("STREAMEXPORT_STATEMENT_TIMEOUT", -1, "statement_timeout"),
        ("STREAMEXPORT_DATABASE", "replica", "not in DATABASES"),
        ("STREAMEXPORT_TIME_ZONE", "Europe/Nowhere", "time_zone must be None"),
    ],
)
def test_invalid_settings_are_refused_too(setting, value, message):
    with override_settings(**{setting: value}), pytest.raises(ImproperlyConfigured, match=message):
        plan()


def test_keyset_accepts_the_primary_key_by_name_and_as_pk():
    assert plan(mode="keyset").keyset_key == "pk"
    assert plan(mode="keyset", keyset_key="id").keyset_key == "id"


def test_prefetch_related_is_refused():
    with pytest.raises(ImproperlyConfigured, match="prefetch_related"):
        plan(Record.objects.prefetch_related("tags"))


def test_a_sliced_queryset_is_refused_in_keyset_mode_only():
    sliced = Record.objects.order_by("id")[:10]
    with pytest.raises(ImproperlyConfigured, match="sliced"):
        plan(sliced, mode="keyset")
    assert plan(sliced).mode == "cursor"


@pytest.mark.parametrize("mode", ["cursor", "keyset"])
def test_disable_server_side_cursors_is_left_to_the_reader_choice(monkeypatch, mode):
    # COPY may read the export (readers.choose_reader(); tests/test_readers_keyset.py).
    monkeypatch.setitem(connections["default"].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    assert plan(mode=mode).mode == mode


def test_disable_server_side_cursors_does_not_concern_sqlite(monkeypatch):
    monkeypatch.setitem(connections["sqlite"].settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    assert plan(using="sqlite").using == "sqlite"


# --- the format ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["xls", "CSV", "", "csv;"])
def test_an_unknown_format_name_is_a_400(name):
    with pytest.raises(UnknownFormat, match="Choose one of: csv, json, ndjson") as info:
        plan(format=name)
    assert info.value.status_code == 400


def test_a_format_not_offered_is_unknown():
    with pytest.raises(UnknownFormat, match="Choose one of: csv"):
        plan(format="ndjson", format_classes=[CSVFormat])


@pytest.mark.parametrize(
    ("name", "format_class"), [(None, CSVFormat), ("csv", CSVFormat), ("ndjson", NDJSONFormat)]
)
def test_format_name_selects_the_class(name, format_class):
    built = plan(format=name)
    assert type(built.format) is format_class
    assert [column.name for column in built.format.columns] == FIELDS


def test_the_first_offered_format_is_the_default():
    assert type(plan(format_classes=[NDJSONFormat, CSVFormat]).format) is NDJSONFormat


def test_format_options_are_passed_to_the_format_class():
    built = plan(format="csv", format_options={"delimiter": ";", "bom": True, "header": True})
    assert built.format.delimiter == ";"
    assert built.format.bom is True
    assert built.format.start() == "\ufeffID;Record title;Author name\r\n".encode()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("csv", {"nonsense": 1}, r"CSVFormat \(format 'csv'; its options: bom, delimiter, "),
        ("ndjson", {"delimiter": ";", "bom": True}, r"NDJSONFormat \(format 'ndjson'; its "),
        ("json", {"end_record": True}, r"JSONFormat \(format 'json'; its options: none\)"),
    ],
)
def test_format_options_a_format_does_not_take_are_refused_naming_it(name, options, message):
    with pytest.raises(ImproperlyConfigured, match=message) as info:
        plan(format=name, format_options=options)
    assert "options it does not take: " + ", ".join(map(repr, options)) in str(info.value)


def test_export_format_instance_is_used_as_is():
    queryset = Record.objects.all()
    columns = resolve_columns(queryset, FIELDS)
    instance = NDJSONFormat(columns)
    built = build_plan(queryset, columns=columns, export_format=instance)
    assert built.format is instance
    assert built.columns == tuple(columns)
    assert built.filename == "records.ndjson"


def test_export_format_class_is_called_with_the_columns():
    built = plan(export_format=NDJSONFormat, format="csv")  # export_format wins over format
    assert type(built.format) is NDJSONFormat
    assert built.format.columns == list(built.columns)


def test_export_format_callable_gets_the_resolved_columns():
    seen = []

    def make_format(columns):
        seen.append(columns)
        return CSVFormat(columns, delimiter="|")

    built = plan(export_format=make_format, labels={"title": "Heading"})
    assert seen == [built.columns]
    assert [column.label for column in built.columns] == ["ID", "Heading", "Author name"]
    assert built.format.start() == b"ID|Heading|Author name\r\n"


# --- the file name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queryset", "format_name", "expected"),
    [
        (Record.objects.all(), "csv", "records.csv"),
        (Record.objects.all(), "ndjson", "records.ndjson"),
        (Country.objects.all(), "csv", "countrys.csv"),
    ],
)
def test_filename_defaults_to_the_model_verbose_name_plural(queryset, format_name, expected):
    assert plan(queryset, fields=["id"], format=format_name).filename == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "etc-passwd.csv"),
        ("a\r\nSet-Cookie: x=1", "a-Set-Cookie- x=1.csv"),
        ("..hidden", "hidden.csv"),
        ("evil\u202ecsv.exe", "evil-csv.exe.csv"),
        ('C:\\win\\a;b"c', "C-win-a-b-c.csv"),
        ("report.csv", "report.csv"),
        ("", "export.csv"),
        ("x" * 300, "x" * 116 + ".csv"),
    ],
)
def test_a_hostile_filename_is_cleaned(name, expected):
    filename = plan(filename=name).filename
    assert filename == expected
    assert not set(filename) & set('/\\\r\n";:\u202e')


def test_plan_is_an_export_plan_with_the_model():
    built = plan(user="someone", export_id="abc123")
    assert isinstance(built, ExportPlan)
    assert built.model is Record
    assert built.user == "someone"
    assert built.export_id == "abc123"
    assert plan().export_id != plan().export_id


@pytest.mark.parametrize("name", ["statement_timeout", "idle_in_transaction_timeout"])
@pytest.mark.parametrize("value", [3_000_000, float("inf"), float("nan")])
def test_a_timeout_postgresql_cannot_take_is_refused(name, value):
    """An explicit value (a view's, the command's) is refused before any response starts."""
    with pytest.raises(ImproperlyConfigured, match=name):
        plan(**{name: value})


# --- the time zone -------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["option", "setting"])
def test_current_is_djangos_current_time_zone_when_the_plan_is_built(where):
    options = {"time_zone": "current"} if where == "option" else {}
    with override_settings(STREAMEXPORT_TIME_ZONE="current"):
        assert plan(**options).time_zone == zoneinfo.ZoneInfo("America/New_York")  # TIME_ZONE
        with timezone.override("Asia/Kolkata"):
            built = plan(**options)
    assert built.time_zone == zoneinfo.ZoneInfo("Asia/Kolkata")
    assert built.format.time_zone == built.time_zone


def test_a_tzinfo_is_taken_as_it_is():
    fixed = datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))
    built = plan(time_zone=fixed, format="ndjson")
    assert built.time_zone is built.format.time_zone is fixed


def test_the_time_zone_is_given_to_a_format_the_caller_built():
    queryset = Record.objects.all()
    columns = resolve_columns(queryset, ["id", "created"])
    instance = CSVFormat(columns)
    built = build_plan(queryset, columns=columns, export_format=instance, time_zone="Asia/Tokyo")
    assert instance.time_zone == zoneinfo.ZoneInfo("Asia/Tokyo")
    # The converters were chosen again: created is now written in Tokyo.
    (converted,) = instance.convert_rows(
        [(1, datetime.datetime(2013, 1, 1, 15, tzinfo=datetime.timezone.utc))]
    )
    assert converted == (1, "2013-01-02T00:00:00+09:00")
    assert built.time_zone == instance.time_zone
