"""Failure signalling, end records, database guards, row limits and admission control."""

from __future__ import annotations

import json
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.test import override_settings

from django_streamexport import failures
from django_streamexport.columns import resolve_columns
from django_streamexport.exceptions import RowLimitExceeded, TooManyExports
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.limits import ExportSlots, export_slots
from django_streamexport.readers.cursor import CursorReader
from django_streamexport.streaming import ExportStream
from tests.conftest import (
    backend_pid,
    both_databases,
    make_records,
    parse_csv,
    plan_stream,
    session_state,
)
from tests.testapp.models import Record

pytestmark = both_databases

FIELDS = ["id", "title", "amount"]


def make_stream(alias, fmt=NDJSONFormat, queryset=None, **kwargs):
    queryset = Record.objects.using(alias).all() if queryset is None else queryset
    columns = resolve_columns(queryset, FIELDS, {})
    fmt_kwargs = kwargs.pop("fmt_kwargs", {})
    return plan_stream(
        queryset,
        columns,
        fmt(columns, **fmt_kwargs),
        chunk_size=50,
        buffer_size=2048,
        using=alias,
        **kwargs,
    )


def lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


class ExplodingNDJSON(NDJSONFormat):
    calls = 0

    def render_rows(self, rows):
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("boom: SELECT secret FROM internals")
        return super().render_rows(rows)


def test_ndjson_error_record_then_abort(db_alias, caplog):
    make_records(db_alias, 500)
    ExplodingNDJSON.calls = 0
    stream = make_stream(db_alias, fmt=ExplodingNDJSON)
    chunks = []
    with pytest.raises(RuntimeError, match="boom"):
        for chunk in stream:
            chunks.append(chunk)
    records = lines(b"".join(chunks))
    assert records[-1] == {
        "_type": "error",
        "error": {"code": "export_error", "message": "The export failed."},
    }
    assert b"secret" not in b"".join(chunks) and b"Traceback" not in b"".join(chunks)
    assert [r["id"] for r in records[:-1]] == list(
        Record.objects.using(db_alias).values_list("id", flat=True)[: len(records) - 1]
    )
    assert stream.outcome == "failed" and stream.error_code == "export_error"
    assert f"Export {stream.export_id} failed after {stream.rows} rows" in caplog.text
    assert not connections[db_alias].in_atomic_block


def test_csv_error_writes_nothing_and_aborts(db_alias):
    make_records(db_alias, 50)
    stream = make_stream(db_alias, fmt=CSVFormat, max_rows=10)
    chunks = []
    with pytest.raises(RowLimitExceeded):
        for chunk in stream:
            chunks.append(chunk)
    rows = parse_csv(b"".join(chunks))
    assert len(rows) == 1 + 10  # header, then exactly the limit; no error text in the CSV
    assert stream.error_code == "row_limit"


@pytest.mark.parametrize("setting", [True, False])
def test_ndjson_end_record_setting(db_alias, setting):
    make_records(db_alias, 120)
    with override_settings(STREAMEXPORT_NDJSON_END_RECORD=setting):
        data = b"".join(make_stream(db_alias))
    records = lines(data)
    if setting:
        assert records[-1] == {"_type": "end", "rows": 120}
        records = records[:-1]
    assert len(records) == 120
    assert all("_type" not in r for r in records)


def test_end_record_on_empty_export(db_alias):
    data = b"".join(make_stream(db_alias, fmt_kwargs={"end_record": True}))
    assert lines(data) == [{"_type": "end", "rows": 0}]


@pytest.mark.parametrize(("count", "fails"), [(99, False), (100, False), (101, True), (500, True)])
def test_row_limit_exact(db_alias, count, fails):
    make_records(db_alias, count)
    stream = make_stream(db_alias, max_rows=100, fmt_kwargs={"end_record": True})
    chunks = []
    if fails:
        with pytest.raises(RowLimitExceeded):
            for chunk in stream:
                chunks.append(chunk)
        records = lines(b"".join(chunks))
        assert len(records) == 101 and records[-1]["error"]["code"] == "row_limit"
    else:
        records = lines(b"".join(stream))
        assert records[-1] == {"_type": "end", "rows": count}


def test_row_limit_setting_and_view_zero(db_alias):
    make_records(db_alias, 30)
    with override_settings(STREAMEXPORT_MAX_ROWS=20):
        assert make_stream(db_alias).plan.max_rows == 20
        assert make_stream(db_alias, max_rows=0).plan.max_rows is None  # 0: no limit
        assert len(lines(b"".join(make_stream(db_alias, max_rows=0)))) == 30


def test_statement_timeout_cancels_a_fetch(pg_alias, caplog):
    make_records(pg_alias, 200)
    pid = backend_pid(pg_alias)
    queryset = Record.objects.using(pg_alias).extra(
        where=[
            "(testapp_record.id < (SELECT min(id) + 60 FROM testapp_record)"
            " OR pg_sleep(0.05) IS NOT NULL)"
        ]
    )
    stream = make_stream(pg_alias, queryset=queryset, statement_timeout=0.2)
    chunks = []
    with pytest.raises(Exception) as excinfo:
        for chunk in stream:
            chunks.append(chunk)
    assert failures.sqlstate(excinfo.value) == "57014"
    assert lines(b"".join(chunks))[-1]["error"]["code"] == "statement_timeout"
    assert "(statement_timeout)" in caplog.text
    assert session_state(pid) == "idle"
    # SET LOCAL ended with the export's transaction.
    with connections[pg_alias].cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


def test_guards_are_set_inside_the_export_transaction(pg_alias):
    seen = {}

    class SpyReader(CursorReader):
        """Looks at the session between batches (so it must not prefetch)."""

        def read(self):
            for batch in super().read():
                if not seen:
                    with connections[pg_alias].cursor() as cursor:
                        cursor.execute("SHOW statement_timeout")
                        seen["statement"] = cursor.fetchone()[0]
                        cursor.execute("SHOW idle_in_transaction_session_timeout")
                        seen["idle"] = cursor.fetchone()[0]
                yield batch

    class Spy(ExportStream):
        def get_reader(self):
            chosen = super().get_reader()
            return SpyReader(self.plan, chosen.query, text_select=chosen.text_select)

    make_records(pg_alias, 5)
    queryset = Record.objects.using(pg_alias).all()
    columns = resolve_columns(queryset, FIELDS, {})
    with override_settings(
        STREAMEXPORT_STATEMENT_TIMEOUT=12.5, STREAMEXPORT_IDLE_IN_TRANSACTION_TIMEOUT=3
    ):
        stream = plan_stream(
            queryset,
            columns,
            NDJSONFormat(columns),
            stream_class=Spy,
            chunk_size=2,
            buffer_size=10,
            using=pg_alias,
        )
        b"".join(stream)
    assert seen == {"statement": "12500ms", "idle": "3s"}


def test_sqlite_ignores_the_guards():
    make_records("sqlite", 20)
    data = b"".join(
        make_stream("sqlite", statement_timeout=0.001, idle_in_transaction_timeout=0.001)
    )
    assert len(lines(data)) == 20


# --- failures: client-facing codes ---------------------------------------------------------


def test_failure_messages_carry_no_internals():
    assert failures.describe_failure(RuntimeError("password=hunter2")) == failures.Failure(
        "export_error", "The export failed."
    )
    assert failures.describe_failure(RowLimitExceeded(7)).message == (
        "The export has more rows than its limit of 7 and was stopped."
    )


# --- admission control ---------------------------------------------------------------------


def test_slots_exact_under_threads():
    slots = ExportSlots()
    admitted, refused = [], []
    barrier = threading.Barrier(40)

    def take():
        barrier.wait(timeout=10)
        try:
            admitted.append(slots.acquire(None, limit=7, per_user_limit=None, retry_after=1))
        except TooManyExports:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert (len(admitted), len(refused), slots.active) == (7, 33, 7)
    for slot in admitted:
        slot.release()
        slot.release()  # idempotent
    assert slots.active == 0


def test_slots_exact_under_gevent():
    import gevent  # the [serve] extra, which scripts/test installs

    slots = ExportSlots()
    results = []

    def take():
        gevent.sleep(0)
        try:
            results.append(slots.acquire(("user", 1), limit=None, per_user_limit=3, retry_after=1))
        except TooManyExports:
            results.append(None)

    gevent.joinall([gevent.spawn(take) for _ in range(20)], timeout=10)
    assert sum(r is not None for r in results) == 3 and len(results) == 20
    assert slots.by_user == {("user", 1): 3}


@override_settings(STREAMEXPORT_MAX_CONCURRENT_EXPORTS=2, STREAMEXPORT_RETRY_AFTER=7)
def test_view_refuses_past_the_limit_and_releases_on_close(client):
    make_records("default", 300)
    assert export_slots.active == 0
    first = client.get("/records/export/?format=csv")
    head = client.head("/records/export/?format=csv")
    assert first.status_code == 200 and head.status_code == 200
    assert export_slots.active == 2
    refused = client.get("/records/export/?format=ndjson")
    assert refused.status_code == 429
    assert refused["Retry-After"] == "7"
    assert refused.content.startswith(b"Too many exports are running (2 at most)")
    head.close()  # HEAD: released when the response is closed
    assert export_slots.active == 1
    # A disconnect: the server closes the response after a few chunks.
    chunks = iter(first.streaming_content)
    next(chunks)
    first.close()
    assert export_slots.active == 0
    again = client.get("/records/export/?format=ndjson")
    assert again.status_code == 200
    b"".join(again.streaming_content)
    again.close()
    assert export_slots.active == 0


@override_settings(STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER=1)
def test_per_user_limit(client):
    alice = User.objects.create_user("alice", password="x")
    client.force_login(alice)
    running = client.get("/records/export/")
    second = client.get("/records/export/")
    assert second.status_code == 429 and "Retry-After" in second
    from django.test import Client

    other = Client()
    other.force_login(User.objects.create_user("bob", password="x"))
    bobs = other.get("/records/export/")
    assert bobs.status_code == 200
    for response in (running, bobs):
        b"".join(response.streaming_content)
        response.close()
    assert export_slots.active == 0


@override_settings(STREAMEXPORT_MAX_CONCURRENT_EXPORTS=1)
def test_slot_released_after_a_failed_export(client):
    make_records("default", 50)
    with override_settings(STREAMEXPORT_MAX_ROWS=5):
        response = client.get("/records/export/?format=ndjson")
        with pytest.raises(RowLimitExceeded):
            b"".join(response.streaming_content)
    response.close()
    assert export_slots.active == 0
    assert client.get("/records/export/", {"format": "bogus"}).status_code == 400
    assert export_slots.active == 0
