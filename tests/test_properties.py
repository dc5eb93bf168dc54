"""Property-based round trips: values stored in PostgreSQL, exported, parsed back equal.

Text is arbitrary Unicode without NUL (PostgreSQL text cannot hold it) and
without surrogates (not encodable), so it includes control characters, quotes,
separators, line breaks and formula triggers; CSV text cells that start with
a trigger come back with the documented ``'`` prefix, and nothing else changes.
"""

from __future__ import annotations

import datetime
import json
import zoneinfo
from decimal import Decimal

import pytest
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_streamexport.columns import resolve_columns
from django_streamexport.formats.csv import CSVFormat, escape_formula
from django_streamexport.formats.ndjson import NDJSONFormat
from tests.conftest import parse_csv, plan_stream
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = ["id", "title", "body", "amount", "ratio", "flag", "count", "created", "day"]
STATS = {"examples": 0, "records": 0}

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
TRICKY = st.sampled_from(["=1+1", "+", "-x", "@a", "\t", "\r", "\n", '"', ",", ";", "\r\n", "'"])
TITLE = st.one_of(TEXT, st.builds(lambda a, b: a + b, TRICKY, TEXT))
RECORD = st.fixed_dictionaries(
    {
        "title": TITLE.map(lambda t: t[:200]),
        "body": st.none() | TITLE,
        "amount": st.none()
        | st.decimals(
            min_value=Decimal("-9999999999.99"),
            max_value=Decimal("9999999999.99"),
            places=2,
            allow_nan=False,
            allow_infinity=False,
        ),
        "ratio": st.none() | st.floats(allow_nan=False, allow_infinity=False),
        "flag": st.none() | st.booleans(),
        "count": st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1),
        "created": st.none()
        | st.datetimes(
            min_value=datetime.datetime(2, 1, 1),
            max_value=datetime.datetime(9998, 12, 31),
            timezones=st.timezones(),
        ),
        "day": st.none() | st.dates(),
    }
)

HYPOTHESIS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def export(fmt) -> bytes:
    queryset = Record.objects.order_by("id")
    columns = resolve_columns(queryset, FIELDS, {})
    stream = plan_stream(queryset, columns, fmt(columns), chunk_size=3, buffer_size=256)
    return b"".join(stream)


def store(values: list[dict]) -> list[Record]:
    Record.objects.all().delete()
    Record.objects.bulk_create([Record(**v) for v in values])
    STATS["examples"] += 1
    STATS["records"] += len(values)
    return list(Record.objects.order_by("id"))


def instant(value: datetime.datetime | None) -> datetime.datetime | None:
    """Return ``value`` in UTC: the instant it names.

    Needed to compare across zones: PEP 495 makes an ambiguous local time
    (a DST fold, e.g. 1981-03-01 02:00 Australia/South) unequal to every time
    in another zone, even the instant it was stored as.
    """
    return None if value is None else value.astimezone(datetime.timezone.utc)


def as_csv_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return str(value)


@HYPOTHESIS
@given(values=st.lists(RECORD, min_size=1, max_size=5))
def test_csv_round_trip(values):
    stored = store(values)
    rows = parse_csv(export(CSVFormat))[1:]
    assert len(rows) == len(values)
    for row, record, original in zip(rows, stored, values, strict=True):
        assert row[0] == str(record.id)
        assert row[1] == escape_formula(original["title"])
        assert row[2] == ("" if original["body"] is None else escape_formula(original["body"]))
        assert (Decimal(row[3]) if row[3] else None) == original["amount"]
        assert (float(row[4]) if row[4] else None) == original["ratio"]
        assert row[5] == as_csv_text(original["flag"])
        assert (int(row[6]) if row[6] else None) == original["count"]
        created = datetime.datetime.fromisoformat(row[7]) if row[7] else None
        assert instant(created) == instant(original["created"])  # whatever the offset
        assert (datetime.date.fromisoformat(row[8]) if row[8] else None) == original["day"]
        # The only change to text is the documented prefix.
        if row[1] != original["title"]:
            assert row[1] == "'" + original["title"]


@HYPOTHESIS
@given(values=st.lists(RECORD, min_size=1, max_size=5))
def test_ndjson_round_trip(values):
    stored = store(values)
    objects = [json.loads(line) for line in export(NDJSONFormat).decode().split("\n")[:-1]]
    assert len(objects) == len(values)
    for obj, record, original in zip(objects, stored, values, strict=True):
        assert list(obj) == FIELDS
        assert obj["id"] == record.id
        assert obj["title"] == original["title"]  # NDJSON never escapes
        assert obj["body"] == original["body"]
        assert (Decimal(obj["amount"]) if obj["amount"] is not None else None) == original["amount"]
        assert obj["ratio"] == original["ratio"]
        assert obj["flag"] is original["flag"]
        assert obj["count"] == original["count"]
        created = datetime.datetime.fromisoformat(obj["created"]) if obj["created"] else None
        assert instant(created) == instant(original["created"])
        assert (datetime.date.fromisoformat(obj["day"]) if obj["day"] else None) == original["day"]


#: Zones with DST, half-hour and 45-minute offsets, a 30-minute DST shift, negative offsets.
ZONES = st.sampled_from(
    [
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "America/St_Johns",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
    ]
)


#: The columns around the datetimes (floats have a spelling difference of their own: integral
#: values past 1e16, such as 3.833874413210458e+16, which PostgreSQL prints with 17 digits).
ZONED_FIELDS = ["id", "title", "created", "day"]


@HYPOTHESIS
@given(values=st.lists(RECORD, min_size=1, max_size=5), zone=ZONES)
def test_csv_in_a_time_zone_is_the_same_from_python_and_postgresql(values, zone):
    """Python and PostgreSQL spell every datetime alike in the zone, naming its instant."""
    stored = store(values)
    queryset = Record.objects.order_by("id")
    columns = resolve_columns(queryset, ZONED_FIELDS, {})
    streams = [
        plan_stream(
            queryset,
            columns,
            CSVFormat(columns),
            chunk_size=3,
            buffer_size=256,
            time_zone=zone,
            database_formatting=database,
            copy_mode=copy_mode,
        )
        for database, copy_mode in ((False, False), (True, False), (True, True))
    ]
    python, database, copy = (b"".join(stream) for stream in streams)
    assert streams[1].reader.text_cells
    assert streams[2].reader.name == ("copy" if is_psycopg3 else "cursor")
    assert database == python
    assert copy == python
    rows = parse_csv(python)[1:]
    for row, record in zip(rows, stored, strict=True):
        created = datetime.datetime.fromisoformat(row[2]) if row[2] else None
        assert instant(created) == instant(record.created)
        if created is not None and 1 < created.year < 9999:
            assert (
                created.utcoffset()
                == record.created.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()
            )


def test_zz_report_property_counts():
    print(f"properties: {STATS}")
