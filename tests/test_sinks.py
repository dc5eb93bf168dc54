"""Sinks: a file gets the bytes an HTTP response body gets; http_body() picks the body."""

from __future__ import annotations

import errno
import gc
import io
import os
from itertools import pairwise

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIRequest
from django.db import DataError, connections
from django.http import StreamingHttpResponse
from django.test import AsyncRequestFactory, RequestFactory
from django.test.utils import CaptureQueriesContext

from django_streamexport.formats.csv import CSVFormat
from django_streamexport.plan import build_plan
from django_streamexport.sinks import (
    AsyncExportStream,
    AsyncNoBody,
    NoBody,
    http_body,
    resolve_output,
    write_to_file,
)
from django_streamexport.streaming import ExportStream
from tests.conftest import (
    backend_pid,
    body,
    both_databases,
    make_records,
    parse_csv,
    server_side_cursors,
    session_state,
)
from tests.testapp.models import Record
from tests.testapp.views import ALL_FIELDS

pytestmark = both_databases


def record_stream(alias="default", stream_class=ExportStream, **options):
    """The stream RecordExport (tests/testapp/views.py) builds, on ``alias``."""
    options.setdefault("format", "csv")
    plan = build_plan(
        Record.objects.using(alias).all(),
        fields=ALL_FIELDS,
        using=alias,
        filename="records",
        **options,
    )
    return stream_class(plan)


# --- write_to_file ---------------------------------------------------------------------------


@pytest.mark.parametrize("format_name", ["csv", "ndjson"])
def test_write_to_file_writes_the_bytes_of_the_http_body(client, format_name):
    make_records("default")
    make_records("default", 500)
    response = client.get(f"/records/export/?format={format_name}")
    assert response.status_code == 200
    http_bytes = body(response)

    stream = record_stream(format=format_name)
    assert response["Content-Disposition"] == f'attachment; filename="{stream.plan.filename}"'
    file = io.BytesIO()
    written = write_to_file(stream, file)
    assert file.getvalue() == http_bytes
    assert written == len(http_bytes) == stream.bytes
    assert stream.outcome == "complete"
    assert stream.rows == 517


class CountingFile(io.BytesIO):
    writes = 0

    def write(self, data):
        self.writes += 1
        return super().write(data)


def test_write_to_file_reports_progress_after_each_chunk():
    make_records("default", 2000)
    stream = record_stream(buffer_size=4096, chunk_size=300)
    file = CountingFile()
    seen = []

    def progress(current):
        assert current is stream
        # Called after the chunk was written: the counters describe what the file holds.
        assert current.bytes == len(file.getvalue())
        seen.append((current.rows, current.bytes))

    written = write_to_file(stream, file, progress=progress)
    assert len(seen) == file.writes > 10
    assert seen[0][0] > 0  # the header went with the first rows, once the query answered
    assert seen[-1] == (2000, written)
    assert all(a[1] < b[1] for a, b in pairwise(seen))  # every CSV chunk has bytes
    assert all(a[0] <= b[0] for a, b in pairwise(seen))
    assert len(parse_csv(file.getvalue())) == 2001


class ExplodingFormat(CSVFormat):
    """Fails on its third slice of rows, mid-export."""

    def render_rows(self, rows):
        self.slices = getattr(self, "slices", 0) + 1
        if self.slices == 3:
            raise RuntimeError("format exploded")
        return super().render_rows(rows)


@pytest.mark.parametrize("prefetch", [True, False])
def test_write_to_file_closes_the_stream_when_the_export_fails(prefetch):
    make_records("default", 3000)
    pid = backend_pid()
    complete = io.BytesIO()
    write_to_file(record_stream(prefetch=prefetch, database_formatting=False), complete)

    stream = record_stream(export_format=ExplodingFormat, prefetch=prefetch)
    closed = []
    stream.add_closer(lambda: closed.append(True))
    file = io.BytesIO()
    with pytest.raises(RuntimeError, match="format exploded"):
        write_to_file(stream, file)
    partial = file.getvalue()
    assert partial, "the header and two slices were written"
    assert complete.getvalue().startswith(partial)
    assert len(partial) < len(complete.getvalue())
    assert len(partial) == stream.bytes
    assert stream.outcome == "failed"
    assert closed == [True]
    assert not connections["default"].in_atomic_block
    assert server_side_cursors() == []
    assert session_state(pid) == "idle"


class BrokenFile(io.BytesIO):
    """A file whose third write fails (a full disk)."""

    writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise OSError(28, "No space left on device")
        return super().write(data)


def test_write_to_file_closes_the_stream_when_a_write_fails():
    make_records("default", 3000)
    pid = backend_pid()
    stream = record_stream(chunk_size=100, buffer_size=1024)
    closed = []
    stream.add_closer(lambda: closed.append(True))
    with pytest.raises(OSError, match="No space left"):
        write_to_file(stream, BrokenFile())
    assert stream.outcome == "disconnected"  # the stream was closed mid-way
    assert 0 < stream.rows < 3000
    assert closed == [True]
    assert not connections["default"].in_atomic_block
    assert server_side_cursors() == []
    assert session_state(pid) == "idle"


@pytest.mark.parametrize("format_name", ["csv", "ndjson"])
def test_write_to_file_writes_nothing_when_the_first_fetch_fails(format_name):
    """The header waits for the query's first rows: a query the database refuses at its
    first FETCH leaves an empty file, not a header that looks like an export of no rows."""
    make_records("default")
    plan = build_plan(
        Record.objects.extra(where=["1 / (testapp_record.id - testapp_record.id) = 1"]),
        fields=["id", "title"],
        format=format_name,
    )
    stream = ExportStream(plan)
    file = io.BytesIO()
    with pytest.raises(DataError, match="division by zero"):
        write_to_file(stream, file)
    assert file.getvalue() == b""
    assert stream.outcome == "failed"


def test_write_to_file_writes_the_header_of_an_export_without_rows():
    make_records("default")
    file = io.BytesIO()
    stream = ExportStream(build_plan(Record.objects.filter(pk=-1), fields=["id"], format="csv"))
    assert write_to_file(stream, file) == len(b"ID\r\n")
    assert file.getvalue() == b"ID\r\n"


def test_write_to_file_on_sqlite():
    make_records("sqlite", 100)
    file = io.BytesIO()
    stream = record_stream("sqlite")
    assert write_to_file(stream, file) == len(file.getvalue())
    assert len(parse_csv(file.getvalue())) == 101
    assert not connections["sqlite"].in_atomic_block


# --- resolve_output --------------------------------------------------------------------------


def test_resolve_output_follows_links_one_at_a_time(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "a.csv").symlink_to("b.csv")  # relative to the link's directory
    (tmp_path / "links" / "b.csv").symlink_to("../data/c.csv")  # dangling: c.csv is not there
    assert resolve_output(str(tmp_path / "links" / "a.csv")) == (
        str(tmp_path / "data" / "c.csv"),
        None,
    )
    monkeypatch.chdir(tmp_path)  # a relative path is the working directory's
    assert resolve_output("data/x.csv") == (str(tmp_path / "data" / "x.csv"), None)


@pytest.mark.parametrize("name", ["/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"])
def test_resolve_output_names_a_descriptor_of_this_process(name):
    path, descriptor = resolve_output(name)
    assert descriptor == 1
    assert path == f"/proc/{os.getpid()}/fd/1"


def test_resolve_output_names_another_process_descriptor():
    assert resolve_output("/proc/1/fd/1") == ("/proc/1/fd/1", -1)


def test_resolve_output_refuses_a_loop_of_links(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as caught:
        resolve_output(str(tmp_path / "a"))
    assert caught.value.errno == errno.ELOOP


# --- http_body ------------------------------------------------------------------------------


@pytest.mark.parametrize("request_kind", ["wsgi", "none"])
def test_http_body_is_the_stream_itself_under_wsgi(request_kind):
    stream = record_stream()
    request = RequestFactory().get("/records/export/") if request_kind == "wsgi" else None
    assert http_body(stream, request) is stream
    stream.close()


@pytest.mark.parametrize("request_kind", ["wsgi", "none"])
def test_a_head_body_is_empty_and_closing_it_closes_the_stream(request_kind):
    make_records("default", 10)
    stream = record_stream()
    closed = []
    stream.add_closer(lambda: closed.append(True))
    request = RequestFactory().head("/records/export/") if request_kind == "wsgi" else None
    with CaptureQueriesContext(connections["default"]) as queries:
        content = http_body(stream, request, include_body=False)
        assert isinstance(content, NoBody)
        response = StreamingHttpResponse(content)
        assert b"".join(response.streaming_content) == b""
        assert closed == []
        response.close()  # what the server does at the end of the response
    assert closed == [True]
    assert len(queries) == 0  # the export query never ran
    assert stream.outcome is None
    content.close()
    del stream, content, response
    gc.collect()
    assert closed == [True]


def test_a_head_request_through_the_view_runs_no_query(client):
    make_records("default", 10)
    with CaptureQueriesContext(connections["default"]) as queries:
        response = client.head("/records/export/?format=csv")
        assert response.status_code == 200
        assert body(response) == b""
    assert not [q for q in queries if "testapp_record" in q["sql"]]


def asgi_request(method="get"):
    request = getattr(AsyncRequestFactory(), method)("/records/export/")
    assert isinstance(request, ASGIRequest)
    return request


def test_http_body_is_async_for_an_asgi_request(db_alias):
    make_records(db_alias, 300)
    expected = b"".join(record_stream(db_alias))
    stream = record_stream(db_alias)
    closed = []
    stream.add_closer(lambda: closed.append(True))
    content = http_body(stream, asgi_request())
    assert isinstance(content, AsyncExportStream)
    assert content.stream is stream
    assert not hasattr(content, "__iter__")  # else Django would read it whole into memory
    response = StreamingHttpResponse(content)
    assert response.is_async

    async def read():
        return [chunk async for chunk in response.streaming_content]

    # async_to_sync: the stream's sync steps run in this thread, with its connection.
    chunks = async_to_sync(read)()
    assert len(chunks) > 1
    assert b"".join(chunks) == expected
    assert stream.outcome == "complete"
    assert closed == [True]
    response.close()
    assert closed == [True]


def test_an_asgi_head_body_is_empty_and_closing_it_closes_the_stream():
    stream = record_stream()
    closed = []
    stream.add_closer(lambda: closed.append(True))
    content = http_body(stream, asgi_request("head"), include_body=False)
    assert isinstance(content, AsyncNoBody)
    response = StreamingHttpResponse(content)
    assert response.is_async

    async def read():
        return [chunk async for chunk in response.streaming_content]

    assert async_to_sync(read)() == []
    assert closed == []
    response.close()
    assert closed == [True]
    assert stream.outcome is None
