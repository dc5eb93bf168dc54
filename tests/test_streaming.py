"""The pipeline: row reading, batching, cursors and transactions, on real databases."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.test.utils import CaptureQueriesContext

from django_streamexport.columns import resolve_columns
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from tests.conftest import (
    backend_pid,
    both_databases,
    make_records,
    other_session,
    parse_csv,
    parse_ndjson,
    plan_stream,
    server_side_cursors,
    session_state,
    traced_peak,
)
from tests.testapp.models import Record

pytestmark = both_databases

FIELDS = ["id", "title", "amount", "author__name", "author__country__name"]


def make_stream(alias, fmt=CSVFormat, fields=FIELDS, buffer_size=16 * 1024, **kwargs):
    queryset = Record.objects.using(alias).order_by("id")
    columns = resolve_columns(queryset, fields)
    return plan_stream(
        queryset,
        columns,
        fmt(columns),
        chunk_size=kwargs.pop("chunk_size", 500),
        buffer_size=buffer_size,
        using=alias,
        **kwargs,
    )


def test_header_is_sent_before_the_query_runs(db_alias):
    make_records(db_alias, 50)
    stream = make_stream(db_alias)
    chunks = iter(stream)
    with CaptureQueriesContext(connections[db_alias]) as queries:
        first = next(chunks)
    assert parse_csv(first) == [
        ["ID", "Record title", "Amount", "Author name", "Author country country name"]
    ]
    assert len(queries) == 0
    stream.close()


def test_ndjson_sends_a_first_empty_chunk_before_the_query(db_alias):
    """NDJSON has no header row; an empty first chunk still makes the server send headers."""
    make_records(db_alias, 50)
    stream = make_stream(db_alias, fmt=NDJSONFormat)
    chunks = iter(stream)
    with CaptureQueriesContext(connections[db_alias]) as queries:
        assert next(chunks) == b""
    assert len(queries) == 0
    assert len(parse_ndjson(b"".join(chunks))) == 50


@pytest.mark.parametrize("copy_mode", [None, False], ids=["default", "cursor"])
def test_export_is_one_query_whatever_its_size(db_alias, copy_mode):
    make_records(db_alias, 3000)
    stream = make_stream(db_alias, chunk_size=100, copy_mode=copy_mode)
    with CaptureQueriesContext(connections[db_alias]) as queries:
        data = b"".join(stream)
    # Besides PostgreSQL's session settings for database formatting (pgtext).
    selects = [
        q["sql"]
        for q in queries
        if "SELECT" in q["sql"].upper() and not q["sql"].startswith("SELECT set_config(")
    ]
    if stream.reader.name == "copy":
        # The one COPY statement runs on psycopg's cursor, which Django does not record.
        assert selects == []
        selects = [stream.reader.statement]
    assert len(selects) == 1, selects
    assert "JOIN" in selects[0].upper()
    assert len(parse_csv(data)) == 3001
    assert stream.rows == 3000
    assert stream.bytes == len(data)
    assert stream.outcome == "complete"


def test_chunks_are_batched_to_about_buffer_size(db_alias):
    make_records(db_alias, 5000)
    buffer_size = 16 * 1024
    chunks = list(make_stream(db_alias, buffer_size=buffer_size))
    # header, a small first batch, then batches near the buffer size
    middle = chunks[2:-1]
    assert len(chunks) < 100, "one chunk per row would be thousands"
    assert middle, chunks
    for chunk in middle:
        assert buffer_size / 2 <= len(chunk) <= buffer_size * 2, len(chunk)


@pytest.mark.parametrize("fmt", [CSVFormat, NDJSONFormat])
def test_postgresql_streams_from_a_cursor_without_hold(pg_alias, fmt):
    """In autocommit, Django would DECLARE ... WITH HOLD and materialise the whole result."""
    make_records(pg_alias, 2000)
    assert connections[pg_alias].get_autocommit()
    # No prefetching: the connection stays free between chunks to look.
    stream = make_stream(pg_alias, fmt=fmt, chunk_size=100, prefetch=False, copy_mode=False)
    assert stream.reader.name == "cursor"
    chunks = iter(stream)
    next(chunks)  # header (CSV) or first batch
    next(chunks)
    cursors = server_side_cursors(pg_alias)
    assert len(cursors) == 1
    name, is_holdable = cursors[0]
    assert name.startswith("_django_curs_")
    assert is_holdable is False
    rest = b"".join(chunks)
    assert rest
    assert server_side_cursors(pg_alias) == []
    assert session_state(backend_pid(pg_alias)) == "idle"


@pytest.mark.skipif(not is_psycopg3, reason="prefetching needs psycopg 3")
@pytest.mark.parametrize("fmt", [CSVFormat, NDJSONFormat])
def test_prefetching_keeps_one_fetch_in_flight_inside_the_transaction(pg_alias, fmt):
    """Prefetching: its own WITHOUT HOLD cursor, the next FETCH sent before a batch is rendered."""
    make_records(pg_alias, 2000)
    pid = backend_pid(pg_alias)
    stream = make_stream(pg_alias, fmt=fmt, chunk_size=100, copy_mode=False)
    with CaptureQueriesContext(connections[pg_alias]) as queries:
        chunks = iter(stream)
        try:
            next(chunks)
            next(chunks)
            # The export's connection is busy: look from another session.
            with other_session() as cursor:
                cursor.execute(
                    "SELECT query, xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = %s",
                    [pid],
                )
                query, in_transaction = cursor.fetchone()
            assert query.startswith("FETCH FORWARD 100 FROM streamexport_")
            assert in_transaction
            data = next(chunks) + b"".join(chunks)
        finally:
            stream.close()
    declare = [q["sql"] for q in queries if q["sql"].startswith("DECLARE")]
    assert len(declare) == 1 and "NO SCROLL CURSOR WITHOUT HOLD FOR" in declare[0]
    assert data
    assert stream.rows == 2000
    assert server_side_cursors(pg_alias) == []
    assert session_state(pid) == "idle"


def test_close_mid_stream_releases_cursor_and_transaction(pg_alias):
    make_records(pg_alias, 3000)
    pid = backend_pid(pg_alias)
    stream = make_stream(pg_alias, chunk_size=100)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    assert session_state(pid) == "idle in transaction"
    stream.close()  # what the WSGI server does when the client goes away
    assert stream.outcome == "disconnected"
    assert 0 < stream.rows < 3000
    assert not connections[pg_alias].in_atomic_block
    assert session_state(pid) == "idle"
    assert server_side_cursors(pg_alias) == []
    # The connection is usable for the next export.
    assert len(parse_csv(b"".join(make_stream(pg_alias)))) == 3001


class ExplodingFormat(CSVFormat):
    def render_rows(self, rows):
        if self.calls == 2:
            raise RuntimeError("boom")
        self.calls += 1
        return super().render_rows(rows)

    calls = 0


def test_error_mid_stream_propagates_and_cleans_up(pg_alias, caplog):
    make_records(pg_alias, 3000)
    pid = backend_pid(pg_alias)
    stream = make_stream(pg_alias, fmt=ExplodingFormat)
    received = []
    with pytest.raises(RuntimeError, match="boom"):
        for chunk in stream:
            received.append(chunk)
    assert received, "some chunks went out before the failure"
    assert stream.outcome == "failed"
    assert not connections[pg_alias].in_atomic_block
    assert session_state(pid) == "idle"
    assert server_side_cursors(pg_alias) == []
    assert f"Export {stream.export_id} failed after {stream.rows} rows" in caplog.text


def test_sqlite_close_mid_stream_ends_the_transaction():
    make_records("sqlite", 3000)
    stream = make_stream("sqlite", chunk_size=100)
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    assert connections["sqlite"].in_atomic_block
    stream.close()
    assert not connections["sqlite"].in_atomic_block


def test_stream_can_be_iterated_once(db_alias):
    stream = make_stream(db_alias)
    list(stream)
    with pytest.raises(RuntimeError):
        iter(stream)


def test_memory_does_not_grow_with_rows(pg_alias):
    """Peak Python allocations for 20,000 rows stay close to those for 2,000."""
    make_records(pg_alias, 20_000)

    def peak(limit):
        queryset = Record.objects.using(pg_alias).order_by("id")[:limit]
        columns = resolve_columns(queryset, [*FIELDS, "data", "created", "body"])
        stream = plan_stream(
            queryset,
            columns,
            NDJSONFormat(columns),
            chunk_size=500,
            buffer_size=64 * 1024,
            using=pg_alias,
        )
        return traced_peak(stream)

    small_peak, small_bytes = peak(2_000)
    large_peak, large_bytes = peak(20_000)
    assert large_bytes > 9 * small_bytes
    # A buffered export would peak at about large_bytes (several MB) here.
    # Ten times the output may not need more than a tenth of the extra bytes.
    assert large_peak - small_peak < (large_bytes - small_bytes) / 10, (small_peak, large_peak)


def test_annotations_before_model_fields_keep_the_requested_order(db_alias):
    """An annotation exported before a model field keeps its column (database formatting
    wraps the SQL and names its columns by position)."""
    make_records(db_alias)
    queryset = (
        Record.objects.using(db_alias)
        .annotate(shout=Concat(F("title"), Value("!")), twice=F("count") * 2)
        .order_by("id")
    )
    fields = ["shout", "id", "twice", "title"]
    columns = resolve_columns(queryset, fields)
    for database_formatting in (False, True):
        stream = plan_stream(
            queryset,
            columns,
            CSVFormat(columns, escape_formulas=False),
            chunk_size=5,
            buffer_size=256,
            using=db_alias,
            database_formatting=database_formatting,
        )
        rows = parse_csv(b"".join(stream))[1:]
        expected = [
            ["" if v is None else str(v) for v in row] for row in queryset.values_list(*fields)
        ]
        assert rows == expected, database_formatting


def test_prefetch_related_is_refused_before_streaming(db_alias):
    queryset = Record.objects.using(db_alias).prefetch_related("author")
    columns = resolve_columns(queryset, ["id", "author__name"])
    with pytest.raises(ImproperlyConfigured, match="prefetch_related"):
        plan_stream(queryset, columns, CSVFormat(columns), chunk_size=5, buffer_size=256)


# Imports of the tests below (kept with them: this part was appended).
import gc  # noqa: E402
import logging  # noqa: E402

from django_streamexport.readers.base import FIRST_BATCH_ROWS  # noqa: E402
from django_streamexport.streaming import (  # noqa: E402
    MAX_SLICE_ROWS,
    ExportStream,
    next_slice_rows,
)

# --- add_closer: once, whatever ends the stream ----------------------------------------------


def _drop_and_collect(namespace: dict) -> None:
    """Drop every reference the test holds to its stream, then run the garbage collector."""
    namespace.clear()
    gc.collect()


@pytest.mark.parametrize(
    "ending", ["close", "close twice", "complete", "complete then close", "partial", "collected"]
)
def test_a_closer_runs_exactly_once(db_alias, ending):
    """close(), completion and garbage collection all run a closer; never more than once."""
    make_records(db_alias, 300)
    calls = []
    held = {"stream": make_stream(db_alias, chunk_size=50, buffer_size=512)}
    held["stream"].add_closer(lambda: calls.append("closed"))
    stream = held["stream"]
    if ending.startswith("close"):
        stream.close()
        if ending == "close twice":
            stream.close()
    elif ending.startswith("complete"):
        assert len(parse_csv(b"".join(stream))) == 301
        assert calls == ["closed"]  # at the end of the iteration, not later
        if ending == "complete then close":
            stream.close()
    elif ending == "partial":
        chunks = iter(stream)
        next(chunks)
        next(chunks)
        assert calls == []
        stream.close()
        assert stream.outcome == "disconnected"
        del chunks
    if ending != "collected":
        assert calls == ["closed"]
    del stream
    _drop_and_collect(held)
    assert calls == ["closed"]


def test_a_failing_closer_is_logged_and_the_others_still_run(caplog):
    calls = []
    stream = make_stream("sqlite")

    def fail():
        calls.append("fail")
        raise RuntimeError("closer broke")

    stream.add_closer(fail)
    stream.add_closer(lambda: calls.append("second"))
    stream.close()
    stream.close()
    assert calls == ["fail", "second"]
    assert f"Export {stream.export_id}: a closer failed." in caplog.messages
    del stream
    gc.collect()
    assert calls == ["fail", "second"]


# --- next_slice_rows: a pure function -------------------------------------------------------


@pytest.mark.django_db(databases=[])  # no database: any query would fail the test
@pytest.mark.parametrize(
    ("buffer_size", "rows", "nbytes", "expected"),
    [
        (65536, 16, 1024, 1024),  # 64 bytes a row: 1024 rows fill 64 KiB
        (65536, 100, 65536, 100),  # the last slice was the right size
        (100, 3, 7, 42),  # rounded down
        (1000, 3, 0, 3000),  # an empty render counts as one byte
        (100, 0, 0, 1),  # no rows: at least one
        (10, 1, 1_000_000, 1),  # one huge row: at least one
        (1, 1, 2, 1),  # the smallest buffer
        (1, 1, 1, 1),
        (MAX_SLICE_ROWS, 1, 1, MAX_SLICE_ROWS),  # exactly the upper bound
        (MAX_SLICE_ROWS + 1, 1, 1, MAX_SLICE_ROWS),  # one over: cut to the bound
        (10**9, 10**6, 1, MAX_SLICE_ROWS),  # tiny rows, huge buffer
        (MAX_SLICE_ROWS - 1, 1, 1, MAX_SLICE_ROWS - 1),  # one under: kept
        (2, 1, 1, 2),  # one over the lower bound: kept
    ],
)
def test_next_slice_rows(buffer_size, rows, nbytes, expected):
    assert next_slice_rows(buffer_size, rows, nbytes) == expected
    assert next_slice_rows(buffer_size, rows, nbytes) == expected  # same answer again


@pytest.mark.django_db(databases=[])
def test_next_slice_rows_stays_within_its_bounds():
    values = [0, 1, 2, 3, 7, 16, 999, 4096, 65536, MAX_SLICE_ROWS, 10**7]
    results = {
        next_slice_rows(buffer_size, rows, nbytes)
        for buffer_size in values[1:]
        for rows in values
        for nbytes in values
    }
    assert min(results) == 1
    assert max(results) == MAX_SLICE_ROWS
    assert MAX_SLICE_ROWS == 20_000


# --- custom stream classes keep every reader -------------------------------------------------

test_logger = logging.getLogger("tests.streams")


class LoggingStream(ExportStream):
    """Overrides iter_body() only to log; reads rows as ExportStream does."""

    def iter_body(self):
        test_logger.info("Export %s: body starts", self.export_id)
        yield from super().iter_body()
        test_logger.info("Export %s: body ends", self.export_id)


class CustomStream(ExportStream):
    """A stream class of one's own that changes nothing."""


@pytest.mark.skipif(not is_psycopg3, reason="prefetching and the text loader need psycopg 3")
def test_a_stream_that_overrides_iter_body_to_log_keeps_prefetch_and_database_formatting(
    pg_alias, caplog
):
    make_records(pg_alias, 500)
    stream = make_stream(pg_alias, stream_class=LoggingStream, chunk_size=100, copy_mode=False)
    assert stream.reader.name == "prefetching cursor"
    assert stream.reader.text_cells is True
    assert stream.reader.reason == "cells spelled by PostgreSQL"
    with (
        CaptureQueriesContext(connections[pg_alias]) as queries,
        caplog.at_level(logging.INFO, logger="tests.streams"),
    ):
        data = b"".join(stream)
    sqls = [q["sql"] for q in queries]
    # Its own prefetching cursor, on the query that has PostgreSQL spell the cells.
    declares = [sql for sql in sqls if sql.startswith("DECLARE streamexport_")]
    assert len(declares) == 1, sqls
    assert "NO SCROLL CURSOR WITHOUT HOLD" in declares[0]
    assert any(sql.startswith("SELECT set_config('TimeZone'") for sql in sqls)
    assert not any("_django_curs_" in sql for sql in sqls)
    assert f"Export {stream.export_id}: body starts" in caplog.messages
    assert f"Export {stream.export_id}: body ends" in caplog.messages
    plain = make_stream(pg_alias, prefetch=False, database_formatting=False)
    assert data == b"".join(plain)
    assert stream.rows == 500


@pytest.mark.parametrize(
    ("alias", "options", "name"),
    [
        pytest.param(
            "default",
            {},
            "copy",
            marks=pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3"),
            id="copy-by-default",
        ),
        pytest.param(
            "default",
            {"copy_mode": True},
            "copy",
            marks=pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3"),
            id="copy",
        ),
        pytest.param(
            "default",
            {"copy_mode": "require"},
            "copy",
            marks=pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3"),
            id="copy-required",
        ),
        pytest.param("default", {"mode": "keyset"}, "keyset", id="keyset-postgresql"),
        pytest.param("sqlite", {"mode": "keyset"}, "keyset", id="keyset-sqlite"),
    ],
)
@pytest.mark.parametrize("stream_class", [CustomStream, LoggingStream])
def test_a_custom_stream_class_keeps_copy_and_keyset_mode(alias, options, name, stream_class):
    make_records(alias, 250)
    stream = make_stream(alias, stream_class=stream_class, chunk_size=40, **options)
    assert type(stream) is stream_class
    assert stream.reader.name == name
    data = b"".join(stream)
    assert stream.outcome == "complete"
    assert stream.rows == 250
    if name == "keyset":
        assert stream.reader.pages == 7  # 6 full pages of 40, then one of 10
    assert data == b"".join(make_stream(alias, prefetch=False, database_formatting=False))


# --- time slices: others run while one long slice is rendered ---------------------------------


@pytest.mark.parametrize("fmt", [CSVFormat, NDJSONFormat])
def test_other_greenlets_run_while_one_long_chunk_is_rendered(db_alias, fmt, monkeypatch):
    """A stream lets other greenlets run within a slice longer than its time slice.

    One batch of every row and a buffer far larger than the body: after the small first
    slice, all the other rows are one slice and one chunk, which the stream used to render
    in one go, the worker's other requests waiting.  Counted, not timed: a greenlet that
    counts its turns runs between the chunks and, here, while the big chunk is rendered.
    ``time.sleep`` is gevent's within the test, as a gevent worker patches it; a time slice
    of one microsecond is shorter than rendering any part of rows, so every part gives a
    turn whatever the machine's speed.
    """
    gevent = pytest.importorskip("gevent")
    import time

    make_records(db_alias, 600)
    # The cursor path, where Python renders the rows (CSV on PostgreSQL would read by COPY,
    # whose chunks arrive rendered and give a turn each).
    expected = b"".join(make_stream(db_alias, fmt=fmt, prefetch=False, copy_mode=False))
    monkeypatch.setattr(time, "sleep", gevent.sleep)
    stream = make_stream(
        db_alias, fmt=fmt, chunk_size=10_000, buffer_size=10**8, time_slice=1e-6, copy_mode=False
    )
    turns, done = [0], []

    def count_turns():
        while not done:
            turns[0] += 1
            gevent.sleep(0)

    def export():
        seen = []  # the counter's turns as each chunk arrives
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            seen.append(turns[0])
        done.append(True)
        return chunks, seen

    counter = gevent.spawn(count_turns)
    exporter = gevent.spawn(export)
    gevent.joinall([exporter, counter], raise_error=True)
    chunks, seen = exporter.value
    # The header (CSV; NDJSON's is empty), the first slice of 16 rows, then one chunk of
    # the other 584 rows.
    assert len(chunks) == 3, [len(chunk) for chunk in chunks]
    parse = parse_csv if fmt is CSVFormat else parse_ndjson
    assert len(parse(chunks[2])) == 600 - FIRST_BATCH_ROWS
    # Between two chunks the stream gives a turn or two; while the last one was rendered
    # the counter ran many times (about once per row here).
    assert seen[2] - seen[1] > 10, seen
    assert stream.time_slice.turns > 10
    assert b"".join(chunks) == expected
    assert stream.rows == 600


def test_a_time_slice_longer_than_the_export_changes_no_chunk(db_alias):
    """Rendering in parts depends on time; chunks and bytes never do."""
    make_records(db_alias, 600)
    sliced = list(make_stream(db_alias, fmt=NDJSONFormat, time_slice=1e-6))
    whole = list(make_stream(db_alias, fmt=NDJSONFormat, time_slice=1))
    assert sliced == whole
