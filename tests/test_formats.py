"""Values in both formats, parsed back with independent readers and compared to the database."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal

import pytest
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.test import override_settings
from django.utils.dateparse import parse_duration

from django_streamexport.columns import Column, resolve_columns
from django_streamexport.formats.base import decimal_text
from django_streamexport.formats.csv import (
    FORMULA_TRIGGERS,
    CSVFormat,
    boolean_text,
    escape_formula,
)
from django_streamexport.formats.ndjson import NDJSONFormat
from tests.conftest import (
    NASTY_TEXTS,
    both_databases,
    make_records,
    parse_csv,
    parse_ndjson,
    plan_stream,
)
from tests.testapp.models import Record
from tests.testapp.views import ALL_FIELDS, ALL_LABELS

pytestmark = both_databases


def export(alias, fmt, fields=ALL_FIELDS, queryset=None, **options):
    queryset = queryset if queryset is not None else Record.objects.using(alias).order_by("id")
    columns = resolve_columns(queryset, fields)
    stream = plan_stream(
        queryset, columns, fmt(columns, **options), chunk_size=7, buffer_size=1024, using=alias
    )
    return b"".join(stream)


def expected_text(value):
    """The CSV cell for text: formula triggers get a ' prefix (OWASP)."""
    if value and value[0] in "=+-@\t\r\n\0":
        return "'" + value
    return value


def test_csv_round_trip_matches_the_database(db_alias):
    records = make_records(db_alias)
    rows = parse_csv(export(db_alias, CSVFormat))
    header, data = rows[0], rows[1:]
    assert header == ALL_LABELS
    assert len(data) == len(records) == len(NASTY_TEXTS)
    for record, row in zip(records, data, strict=True):
        cell = dict(
            zip([f if isinstance(f, str) else f.name for f in ALL_FIELDS], row, strict=True)
        )
        assert cell["id"] == str(record.id)
        assert cell["title"] == expected_text(record.title)
        assert cell["body"] == ("" if record.body is None else expected_text(record.body))
        assert cell["status"] == record.get_status_display()
        assert cell["count"] == ("" if record.count is None else str(record.count))
        if record.amount is None:
            assert cell["amount"] == ""
        else:
            assert Decimal(cell["amount"]) == record.amount
            assert cell["amount"] == f"{record.amount:.2f}"
        assert cell["ratio"] == ("" if record.ratio is None else repr(record.ratio))
        assert cell["flag"] == {None: "", True: "true", False: "false"}[record.flag]
        if record.created is None:
            assert cell["created"] == ""
        else:
            parsed = datetime.datetime.fromisoformat(cell["created"])
            assert parsed.utcoffset() is not None
            assert parsed == record.created
            assert "T" in cell["created"]
        assert cell["day"] == ("" if record.day is None else record.day.isoformat())
        assert cell["at"] == ("" if record.at is None else record.at.isoformat())
        assert (parse_duration(cell["took"]) if cell["took"] else None) == record.took
        assert uuid.UUID(cell["key"]) == record.key
        assert cell["key"] == str(record.key)
        if record.data is None:
            assert cell["data"] == ""
        else:
            import json

            assert json.loads(cell["data"]) == record.data
        author = record.author
        assert cell["author__name"] == ("" if author is None else expected_text(author.name))
        country = author.country if author else None
        assert cell["author__country__name"] == ("" if country is None else country.name)


def test_ndjson_round_trip_matches_the_database(db_alias):
    records = make_records(db_alias)
    lines = parse_ndjson(export(db_alias, NDJSONFormat))
    assert len(lines) == len(records)
    for record, line in zip(records, lines, strict=True):
        assert list(line) == [f if isinstance(f, str) else f.name for f in ALL_FIELDS]
        assert line["id"] == record.id
        assert line["title"] == record.title  # no formula escaping in JSON
        assert line["body"] == record.body
        assert line["status"] == record.get_status_display()
        assert line["count"] == record.count
        assert (None if line["amount"] is None else Decimal(line["amount"])) == record.amount
        assert line["amount"] is None or isinstance(line["amount"], str)
        assert line["ratio"] == record.ratio
        assert line["flag"] is record.flag
        if record.created is None:
            assert line["created"] is None
        else:
            parsed = datetime.datetime.fromisoformat(line["created"])
            assert parsed.utcoffset() is not None
            assert parsed == record.created
        assert line["day"] == (record.day.isoformat() if record.day else None)
        assert line["at"] == (record.at.isoformat() if record.at else None)
        assert (parse_duration(line["took"]) if line["took"] else None) == record.took
        assert line["key"] == str(record.key)
        assert line["data"] == record.data
        assert line["author__name"] == (record.author.name if record.author else None)


def test_csv_and_ndjson_carry_the_same_values(db_alias):
    """Apart from the documented spellings (empty cell vs null, escaping), one value each."""
    make_records(db_alias)
    fields = ["id", "amount", "flag", "created", "day", "at", "took", "key"]
    csv_rows = parse_csv(export(db_alias, CSVFormat, fields))[1:]
    json_rows = parse_ndjson(export(db_alias, NDJSONFormat, fields))
    for csv_row, json_row in zip(csv_rows, json_rows, strict=True):
        for name, cell in zip(fields, csv_row, strict=True):
            value = json_row[name]
            if value is None:
                assert cell == ""
            elif isinstance(value, bool):
                assert cell == ("true" if value else "false")
            else:
                assert cell == str(value)


@pytest.mark.parametrize("text", NASTY_TEXTS)
def test_formula_escaping_covers_the_owasp_triggers(text):
    escaped = escape_formula(text)
    if text[:1] in FORMULA_TRIGGERS:
        assert escaped == "'" + text
    else:
        assert escaped == text


@pytest.mark.parametrize(
    ("convert", "values"),
    [
        (escape_formula, [*NASTY_TEXTS, None, ""]),
        (boolean_text, [True, None, False]),
        (decimal_text, [Decimal("-0.50"), None, Decimal("1E-7"), Decimal("12E+3")]),
    ],
    ids=["escape_formula", "boolean_text", "decimal_text"],
)
def test_batch_forms_give_what_their_converters_give(convert, values):
    convert_batch = CSVFormat.batch_converters[convert]
    assert convert_batch(tuple(values)) == [None if v is None else convert(v) for v in values]


def test_a_get_converter_override_wins_over_the_batch_forms(db_alias):
    class YesNo(CSVFormat):
        def get_converter(self, column):
            if column.kind == "boolean":
                return lambda value: "yes" if value else "no"
            return super().get_converter(column)

    Record.objects.using(db_alias).create(title="=x", flag=True)
    Record.objects.using(db_alias).create(title="y", flag=False)
    rows = parse_csv(export(db_alias, YesNo, ["title", "flag"]))[1:]
    assert rows == [["'=x", "yes"], ["y", "no"]]


def test_numbers_are_never_escaped(db_alias):
    Record.objects.using(db_alias).create(title="-5", count=-5, amount=Decimal("-5.00"), ratio=-0.5)
    row = parse_csv(export(db_alias, CSVFormat, ["title", "count", "amount", "ratio"]))[1]
    assert row == ["'-5", "-5", "-5.00", "-0.5"]


def test_formula_escaping_can_be_turned_off(db_alias):
    Record.objects.using(db_alias).create(title="=1+1", body="=2+2")
    with override_settings(STREAMEXPORT_CSV_ESCAPE_FORMULAS=False):
        row = parse_csv(
            export(db_alias, CSVFormat, ["title", Column("body", escape_formulas=True)])
        )[1]
    assert row == ["=1+1", "'=2+2"]
    row = parse_csv(export(db_alias, CSVFormat, [Column("title", escape_formulas=False), "body"]))[
        1
    ]
    assert row == ["=1+1", "'=2+2"]


def test_bom_and_delimiter_for_excel(db_alias):
    Record.objects.using(db_alias).create(title="a;b", count=1)
    with override_settings(STREAMEXPORT_CSV_BOM=True, STREAMEXPORT_CSV_DELIMITER=";"):
        data = export(db_alias, CSVFormat, ["title", "count"])
    assert data.startswith(b"\xef\xbb\xbf")
    assert data.decode("utf-8-sig") == 'Record title;Count\r\n"a;b";1\r\n'
    plain = export(db_alias, CSVFormat, ["title", "count"], bom=False, delimiter="\t")
    assert plain == b"Record title\tCount\r\na;b\t1\r\n"


def test_rfc4180_line_breaks_and_quotes(db_alias):
    Record.objects.using(db_alias).create(title='He said "hi",\r\nthen left', count=2)
    data = export(db_alias, CSVFormat, ["title", "count"])
    assert data == b'Record title,Count\r\n"He said ""hi"",\r\nthen left",2\r\n'


def test_annotations_and_expressions_export(db_alias):
    make_records(db_alias)
    queryset = (
        Record.objects.using(db_alias)
        .annotate(double=F("count") * 2, label=Concat(Value("="), F("title")))
        .order_by("id")
    )
    rows = parse_ndjson(
        export(db_alias, NDJSONFormat, ["id", "double", "label"], queryset=queryset)
    )
    records = list(queryset)
    assert [row["double"] for row in rows] == [r.double for r in records]
    csv_rows = parse_csv(export(db_alias, CSVFormat, ["double", "label"], queryset=queryset))
    assert csv_rows[0] == ["Double", "Label"]
    assert all(row[1].startswith("'=") for row in csv_rows[1:])  # text annotation is escaped


def test_naive_datetimes_get_the_default_time_zone_offset(transactional_db):
    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        Record.objects.create(created=datetime.datetime(2013, 7, 1, 12, 0))
        csv_cell = parse_csv(export("default", CSVFormat, ["created"]))[1][0]
        json_cell = parse_ndjson(export("default", NDJSONFormat, ["created"]))[0]["created"]
    assert csv_cell == json_cell == "2013-07-01T12:00:00-04:00"


# --- the export's time zone: the same text in every text format ------------------------------

#: A winter and a summer instant, a DST fold, microseconds, a NULL.
ZONE_MOMENTS = [
    datetime.datetime(2013, 1, 1, 5, 30, 15, 123000, tzinfo=datetime.timezone.utc),
    datetime.datetime(2013, 7, 1, 5, 30, 15, tzinfo=datetime.timezone.utc),
    datetime.datetime(2021, 10, 31, 0, 30, tzinfo=datetime.timezone.utc),
    datetime.datetime(2021, 10, 31, 1, 30, tzinfo=datetime.timezone.utc),
    None,
]
#: ZONE_MOMENTS in Europe/Berlin.
BERLIN = [
    "2013-01-01T06:30:15.123000+01:00",
    "2013-07-01T07:30:15+02:00",
    "2021-10-31T02:30:00+02:00",
    "2021-10-31T02:30:00+01:00",
    None,
]


def zoned_export(alias, fmt, **plan_options):
    Record.objects.using(alias).bulk_create(
        [Record(title=str(i), created=m) for i, m in enumerate(ZONE_MOMENTS)]
    )
    queryset = Record.objects.using(alias).order_by("id")
    columns = resolve_columns(queryset, ["created"])
    stream = plan_stream(queryset, columns, fmt(columns), using=alias, **plan_options)
    return b"".join(stream)


@pytest.mark.parametrize("how", ["option", "setting"])
def test_csv_ndjson_and_json_write_datetimes_in_the_export_time_zone(db_alias, how):
    from django_streamexport.formats.json import JSONFormat

    options = {"time_zone": "Europe/Berlin"} if how == "option" else {}
    with override_settings(STREAMEXPORT_TIME_ZONE="Europe/Berlin" if how == "setting" else None):
        csv_data = zoned_export(db_alias, CSVFormat, **options)
        Record.objects.using(db_alias).all().delete()
        ndjson_data = zoned_export(db_alias, NDJSONFormat, **options)
        Record.objects.using(db_alias).all().delete()
        json_data = zoned_export(db_alias, JSONFormat, **options)
    assert [row[0] or None for row in parse_csv(csv_data)[1:]] == BERLIN
    assert [line["created"] for line in parse_ndjson(ndjson_data)] == BERLIN
    import json

    assert [item["created"] for item in json.loads(json_data)] == BERLIN
    # The same instants as stored.
    assert [datetime.datetime.fromisoformat(c) if c else None for c in BERLIN] == ZONE_MOMENTS


def test_without_a_time_zone_datetimes_stay_utc(db_alias):
    cells = [row[0] for row in parse_csv(zoned_export(db_alias, CSVFormat))[1:]]
    assert cells[:2] == ["2013-01-01T05:30:15.123000+00:00", "2013-07-01T05:30:15+00:00"]


def test_ndjson_keeps_an_offset_with_seconds(db_alias):
    """orjson would cut +00:53:28 (Berlin's local mean time) to +00:53, another instant."""
    moment = datetime.datetime(1890, 1, 1, tzinfo=datetime.timezone.utc)
    Record.objects.using(db_alias).create(created=moment)
    queryset = Record.objects.using(db_alias)
    columns = resolve_columns(queryset, ["created"])
    stream = plan_stream(
        queryset, columns, NDJSONFormat(columns), using=db_alias, time_zone="Europe/Berlin"
    )
    (line,) = parse_ndjson(b"".join(stream))
    assert line["created"] == "1890-01-01T00:53:28+00:53:28"


def test_naive_datetimes_are_written_in_the_export_time_zone(transactional_db):
    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        Record.objects.create(created=datetime.datetime(2013, 7, 1, 12, 0))
        queryset = Record.objects.all()
        columns = resolve_columns(queryset, ["created"])
        stream = plan_stream(queryset, columns, CSVFormat(columns), time_zone="Asia/Kolkata")
        cell = parse_csv(b"".join(stream))[1][0]
    assert cell == "2013-07-01T21:30:00+05:30"  # 12:00 in New York (EDT)
