"""Prefetching reads: what the driver allows, and closing with a FETCH in flight.

The FETCH in flight is made slow with ``pg_sleep()`` for every row after the first batch
(a volatile expression, so PostgreSQL evaluates it as each row is fetched), and its
backend is then ended from another session.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

import pytest
from django.db import connections, transaction
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.db.models import IntegerField
from django.db.models.expressions import RawSQL

from django_streamexport.plan import build_plan
from django_streamexport.postgresql.prefetch import (
    FetchedRows,
    prefetch_available,
    prefetching_batches,
)
from django_streamexport.readers.base import FIRST_BATCH_ROWS
from django_streamexport.streaming import ExportStream
from tests.conftest import backend_pid, make_records, other_session, parse_csv
from tests.testapp.models import Record

needs_psycopg3 = pytest.mark.skipif(not is_psycopg3, reason="prefetching needs psycopg 3")


@pytest.mark.parametrize(
    ("alias", "available"), [("default", bool(is_psycopg3)), ("sqlite", False)]
)
@pytest.mark.django_db(databases=["default", "sqlite"])
def test_prefetch_available_on_an_open_connection(alias, available):
    connections[alias].ensure_connection()
    assert prefetch_available(connections[alias]) is available


def test_prefetch_available_before_the_connection_opens():
    """The reader is chosen when the stream is made, before the connection may be open."""
    connection = connections["default"]
    connection.close()
    assert connection.connection is None
    assert prefetch_available(connection) is bool(is_psycopg3)
    assert connection.connection is None  # asking did not connect
    assert prefetch_available(connections["sqlite"]) is False


def wait_for(cursor, sql, params, predicate, timeout=10.0):
    """Run ``sql`` on ``cursor`` until ``predicate(rows)``; return the rows."""
    deadline = time.monotonic() + timeout
    while True:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        if predicate(rows):
            return rows
        assert time.monotonic() < deadline, rows
        time.sleep(0.02)


@needs_psycopg3
@pytest.mark.django_db(transaction=True, databases=["default"])
def test_a_fetch_in_flight_that_fails_while_closing_is_logged_at_debug(caplog):
    records = make_records("default", 100)
    # Rows after the first batch sleep, so the second FETCH is still running when its
    # backend is ended.
    last_quick = records[FIRST_BATCH_ROWS - 1].pk
    slow = RawSQL(
        "CASE WHEN testapp_record.id > %s THEN length(pg_sleep(%s)::text) ELSE 0 END",
        [last_quick, 30],
        output_field=IntegerField(),
    )
    queryset = Record.objects.annotate(slow=slow).order_by("id")
    plan = build_plan(
        queryset, fields=["id", "title", "slow"], chunk_size=20, database_formatting=False
    )
    stream = ExportStream(plan)
    assert stream.reader.name == "prefetching cursor"
    pid = backend_pid()
    try:
        chunks = iter(stream)
        next(chunks)  # the header
        first = next(chunks)  # the first batch; the second FETCH is now in flight
        assert len(parse_csv(first)) == FIRST_BATCH_ROWS
        with other_session() as cursor:
            activity = wait_for(
                cursor,
                "SELECT query, wait_event FROM pg_stat_activity"
                " WHERE pid = %s AND state = 'active'",
                [pid],
                lambda rows: rows and rows[0][1] == "PgSleep",
            )
            query = activity[0][0]
            assert query.startswith("FETCH FORWARD 20 FROM streamexport_")
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
            wait_for(
                cursor,
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                [pid],
                lambda rows: not rows,
            )
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG, logger="django_streamexport"):
            stream.close()  # a client disconnect
        assert time.monotonic() - started < 10  # did not wait for the sleeping rows
        assert stream.outcome == "disconnected"
        records = [r for r in caplog.records if "Prefetched FETCH" in r.getMessage()]
        assert len(records) == 1, caplog.text
        record = records[0]
        assert record.name == "django_streamexport"
        assert record.levelno == logging.DEBUG
        assert record.getMessage().startswith("Prefetched FETCH from streamexport_")
        assert "failed while closing: " in record.getMessage()
        assert not connections["default"].in_atomic_block
    finally:
        with other_session() as cursor:  # never leave a sleeping backend behind
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        connections["default"].close()  # the next test reconnects
    assert backend_pid() != pid


@needs_psycopg3
@pytest.mark.django_db(transaction=True, databases=["default"])
def test_fetched_rows_are_loaded_as_sliced_and_stay_their_own():
    """A batch is a sequence of the FETCH's rows, loaded when sliced (a slice at a time, so
    loading falls within the stream's time slices), and keeps its rows after the next
    FETCH has replaced it in the driver's transformer."""
    sql = "SELECT g, g::text || ' x', g * 1.5 FROM generate_series(1, %s) AS g"
    with transaction.atomic(), connections["default"].cursor() as cursor:
        batches = prefetching_batches(cursor, sql, [50], iter([20, 20, 20, 20]).__next__)
        try:
            batch = next(batches)
            assert isinstance(batch, FetchedRows)
            assert len(batch) == 20
            assert batch[0] == (1, "1 x", Decimal("1.5"))
            assert batch[-1] == batch[19] == (20, "20 x", Decimal("30.0"))
            assert batch[5:7] == [(6, "6 x", Decimal("9.0")), (7, "7 x", Decimal("10.5"))]
            assert [row[0] for row in batch[::7]] == [1, 8, 15]
            assert [row[0] for row in batch[18:100]] == [19, 20]
            assert batch[30:] == [] and batch[7:3] == []
            with pytest.raises(IndexError):
                batch[20]
            assert list(batch) == [(g, f"{g} x", Decimal(g) * Decimal("1.5")) for g in range(1, 21)]
            doubled = batch.then(lambda rows: [(row[0] * 2,) for row in rows])
            assert doubled[:2] == [(2,), (4,)]
            second = next(batches)  # the transformer now holds the second result
            assert second[0][0] == 21
            assert batch[19][0] == 20 and doubled[19] == (40,)
        finally:
            batches.close()
