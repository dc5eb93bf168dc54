"""The JSON array format (RFC 8259) through the export view, on PostgreSQL and SQLite."""

from __future__ import annotations

import json

import pytest
from django.test import RequestFactory

from django_streamexport.exceptions import RowLimitExceeded
from django_streamexport.formats import default_format_classes, format_classes_by_name
from django_streamexport.formats.json import JSONFormat
from tests.conftest import body, both_databases, make_records, parse_ndjson
from tests.testapp.models import Record
from tests.testapp.views import RecordExport

pytestmark = both_databases


def export(alias: str, query: str = "?format=json", **attrs):
    """Return the response of ``RecordExport`` (every field) reading ``alias``."""
    view = type("AliasRecordExport", (RecordExport,), {"using": alias, **attrs})
    return view.as_view()(RequestFactory().get("/records/export/" + query))


def collect(response) -> tuple[list[bytes], BaseException | None]:
    """Read a response as a server does; return its chunks and what aborted the transfer."""
    chunks: list[bytes] = []
    try:
        for chunk in response.streaming_content:
            chunks.append(chunk)
    except Exception as exc:  # the server would abort the transfer here
        return chunks, exc
    finally:
        response.close()
    return chunks, None


class ExplodingJSON(JSONFormat):
    """A JSON array whose third batch of rows fails to render."""

    calls = 0

    def render_rows(self, rows):
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("boom: SELECT secret FROM internals")
        return super().render_rows(rows)


def test_the_view_offers_the_json_array_among_the_default_formats():
    offered = format_classes_by_name(RecordExport().get_format_classes())
    assert offered.keys() >= {"csv", "ndjson", "json"}
    assert offered["json"] is JSONFormat
    assert list(RecordExport().get_format_classes()) == list(default_format_classes())


def test_the_real_url_serves_a_json_array(client):
    records = make_records("default")
    response = client.get("/records/export/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"].split(";")[0] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="records.json"'
    data = body(response)
    assert data.startswith(b"[") and data.endswith(b"\n]\n")
    assert [row["id"] for row in json.loads(data)] == [r.id for r in records]


def test_the_array_holds_the_ndjson_records(db_alias):
    records = make_records(db_alias)
    array = json.loads(body(export(db_alias)))
    assert array == parse_ndjson(body(export(db_alias, "?format=ndjson")))
    assert len(array) == Record.objects.using(db_alias).count() == len(records)
    # The nasty values survive: quotes, line breaks, formulas, emoji, decimals exact.
    assert [row["title"] for row in array] == [r.title for r in records]
    assert [row["amount"] for row in array] == [
        None if r.amount is None else f"{r.amount:f}" for r in records
    ]
    assert [row["data"] for row in array] == [r.data for r in records]


def test_an_empty_export_is_an_empty_array(db_alias):
    data = body(export(db_alias))
    assert data == b"[]\n"
    assert json.loads(data) == []


def test_one_row(db_alias):
    Record.objects.using(db_alias).create(title="only")
    array = json.loads(body(export(db_alias)))
    assert [row["title"] for row in array] == ["only"]


def test_a_row_limit_mid_stream_leaves_invalid_json_and_aborts(db_alias):
    make_records(db_alias, 50)
    chunks, error = collect(export(db_alias, max_rows=10, chunk_size=4))
    assert isinstance(error, RowLimitExceeded)
    data = b"".join(chunks)
    assert data.startswith(b"[")
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)
    # Exactly the limit's rows were sent, and nothing after them: no closing bracket.
    assert not data.rstrip().endswith(b"]")
    sent = json.loads(data + b"\n]")
    expected = parse_ndjson(body(export(db_alias, "?format=ndjson")))[:10]
    assert sent == expected


def test_a_failing_format_mid_stream_leaves_invalid_json_and_aborts(db_alias):
    make_records(db_alias, 300)
    ExplodingJSON.calls = 0
    chunks, error = collect(
        export(db_alias, format_classes=[ExplodingJSON], chunk_size=20, buffer_size=1024)
    )
    assert isinstance(error, RuntimeError)
    data = b"".join(chunks)
    assert data.startswith(b"[\n{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)
    assert b"secret" not in data and b"error" not in data


def test_chunks_stay_bounded(db_alias):
    make_records(db_alias, 3000)
    buffer_size = 8 * 1024
    chunks, error = collect(export(db_alias, buffer_size=buffer_size, chunk_size=500))
    assert error is None
    assert chunks[0] == b"["  # sent before the query runs
    assert len(chunks) > 10, "a large export comes in several chunks"
    assert max(len(chunk) for chunk in chunks) < 4 * buffer_size
    assert len(json.loads(b"".join(chunks))) == 3000
