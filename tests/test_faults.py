"""Faults injected into real exports, served by gunicorn (deploy/gunicorn.conf.py, gevent).

Each fault: the client can tell the export failed (NDJSON error record and a
transfer without its terminating chunk; CSV the cut transfer), the server
logged the failure under the export id, no session is left behind in
``pg_stat_activity``, and the next export succeeds.
"""

from __future__ import annotations

import json
import time

import pytest
from django.db import connections
from django.db.backends.postgresql.psycopg_any import is_psycopg3

from tests.conftest import parse_csv
from tests.servers import (
    Download,
    SmallWindowConnection,
    free_port,
    get,
    gunicorn,
    insert_records,
    other_sessions,
    read_rest,
    wait_for_no_sessions,
)
from tests.testapp.models import Record

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

# Free loopback ports picked at import: concurrent test runs on one machine must not collide;
# nothing listens on CLOSED_DB_PORT.
PORT = free_port()
UNREACHABLE_PORT = free_port()
CLOSED_DB_PORT = free_port()


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, tmp_path_factory):
    with django_db_blocker.unblock(), gunicorn(PORT, tmp_path_factory.mktemp("faults")) as srv:
        yield srv


@pytest.fixture
def db_name():
    return connections["default"].settings_dict["NAME"]


def ndjson_lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode().splitlines()]


def assert_failed_and_recovered(server, download, code, db_name):
    """The shared checks after a fault: cut transfer, logged, nothing left, next one works."""
    assert download.status == 200
    assert not download.complete, "the transfer must be cut, not end cleanly"
    export_id = download.headers["X-Export-Id"]
    log = server.wait_for_log(f"Export {export_id} failed after")
    line = next(line for line in log.splitlines() if f"Export {export_id} failed" in line)
    assert f"({code})" in line
    wait_for_no_sessions(db_name)
    total = Record.objects.count()
    after = get(server.port, "/records/export/?format=ndjson")
    assert after.status == 200 and after.complete
    records = ndjson_lines(after.body)
    assert records[-1] == {"_type": "end", "rows": total}
    assert [r["id"] for r in records[:-1]] == list(
        Record.objects.order_by("id").values_list("id", flat=True)
    )
    wait_for_no_sessions(db_name)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_backend_terminated_mid_stream(server, db_name, fmt):
    """NDJSON reads through the cursor (idle in transaction between fetches); CSV through
    COPY by default, one statement blocked writing to the client (``active``)."""
    copy = fmt == "csv" and is_psycopg3
    insert_records(20_000)
    conn = SmallWindowConnection(PORT)
    conn.request("GET", f"/faults/kill/?format={fmt}")
    response = conn.getresponse()
    body = bytearray(response.read(4096))
    # The server is now blocked writing to us, inside the export transaction.
    state = "active" if copy else "idle in transaction"
    deadline = time.monotonic() + 10
    while not (sessions := [s for s in other_sessions(db_name) if s[1] == state]):
        assert time.monotonic() < deadline, other_sessions(db_name)
        time.sleep(0.05)
    [(pid, _, query)] = sessions
    assert ("COPY" if copy else "FETCH") in query
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert cursor.fetchone()[0] is True
    complete = read_rest(response, body)
    conn.close()
    download = Download(response.status, response.headers, bytes(body), complete)
    ids = list(Record.objects.order_by("id").values_list("id", flat=True))
    if fmt == "csv":
        rows = parse_csv(bytes(body))[1:]
        assert 0 < len(rows) < 20_000
        assert [int(r[0]) for r in rows] == ids[: len(rows)]
        assert_failed_and_recovered(server, download, "database_unavailable", db_name)
        return
    lines = ndjson_lines(bytes(body))
    assert lines[-1] == {
        "_type": "error",
        "error": {
            "code": "database_unavailable",
            "message": "The connection to the database was lost.",
        },
    }
    rows = lines[:-1]
    assert 0 < len(rows) < 20_000
    assert [r["id"] for r in rows] == ids[: len(rows)]
    assert_failed_and_recovered(server, download, "database_unavailable", db_name)


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_statement_timeout(server, db_name, fmt):
    """NDJSON: a FETCH runs past the timeout; CSV (COPY by default): a wait for the next
    rows does, and the export cancels the COPY itself."""
    insert_records(1000)
    download = get(PORT, f"/faults/statement-timeout/?format={fmt}")
    ids = list(Record.objects.order_by("id").values_list("id", flat=True))
    if fmt == "csv":
        rows = [int(r[0]) for r in parse_csv(download.body)[1:]]
    else:
        lines = ndjson_lines(download.body)
        assert lines[-1]["_type"] == "error"
        assert lines[-1]["error"]["code"] == "statement_timeout"
        rows = [r["id"] for r in lines[:-1]]
    # Rows already rendered went out; the batch being filled when the fetch failed did not.
    # (COPY's plan is made for the whole result, not for a cursor's first rows: it may sort
    # before its first row, and that first wait then runs past the timeout.)
    assert (0 if fmt == "csv" else 1) <= len(rows) <= 300
    assert rows == ids[: len(rows)]
    assert_failed_and_recovered(server, download, "statement_timeout", db_name)


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_row_limit(server, db_name, fmt):
    insert_records(3000)
    download = get(PORT, f"/faults/row-limit/?format={fmt}")
    ids = list(Record.objects.order_by("id").values_list("id", flat=True)[:1000])
    if fmt == "ndjson":
        lines = ndjson_lines(download.body)
        assert [r["id"] for r in lines[:-1]] == ids
        assert lines[-1] == {
            "_type": "error",
            "error": {
                "code": "row_limit",
                "message": "The export has more rows than its limit of 1000 and was stopped.",
            },
        }
    else:
        rows = parse_csv(download.body)
        assert rows[0] == ["ID", "Record title", "Body"]
        assert [int(r[0]) for r in rows[1:]] == ids
    assert_failed_and_recovered(server, download, "row_limit", db_name)


def test_client_reading_1kb_per_second(server, db_name):
    """A client at 1 KB/s keeps the export transaction idle past its 1 s bound."""
    insert_records(20_000)
    conn = SmallWindowConnection(PORT, rcvbuf=4096)
    conn.request("GET", "/faults/slow-read/?format=ndjson")
    response = conn.getresponse()
    body = bytearray()
    deadline = time.monotonic() + 60
    # Read 1 KB a second until PostgreSQL has ended the idle session.
    while other_sessions(db_name):
        assert time.monotonic() < deadline, "the idle-in-transaction bound never tripped"
        body += response.read(1024)
        time.sleep(1)
    slow_bytes = len(body)
    # Then read the rest at full speed: the next FETCH fails and the transfer is cut.
    complete = read_rest(response, body)
    conn.close()
    download = Download(response.status, response.headers, bytes(body), complete)
    lines = ndjson_lines(bytes(body))
    assert lines[-1]["_type"] == "error"
    assert lines[-1]["error"]["code"] == "idle_timeout"
    assert len(lines) - 1 < 20_000
    assert slow_bytes >= 1024
    assert_failed_and_recovered(server, download, "idle_timeout", db_name)


def test_unreachable_database_is_a_503_before_streaming(django_db_setup, tmp_path):
    with gunicorn(UNREACHABLE_PORT, tmp_path, STREAMEXPORT_SERVER_DB_PORT=str(CLOSED_DB_PORT)):
        download = get(UNREACHABLE_PORT, "/records/export/?format=csv")
    assert download.status == 503
    assert download.complete
    assert download.headers["Retry-After"] == "10"
    assert download.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert download.body == b"The export database cannot be reached right now; try again later.\n"


def test_a_dropped_persistent_connection_is_replaced_before_the_200(client, db_name):
    """A kept connection the server has ended is found and replaced before streaming.

    Django's test client keeps the connection between requests, as ``CONN_MAX_AGE`` does
    in production; without the check the export would fail after its 200.
    """
    insert_records(50)
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    response = client.get("/records/export/?format=csv")
    assert response.status_code == 200
    rows = parse_csv(b"".join(response.streaming_content))
    response.close()
    assert [int(row[0]) for row in rows[1:]] == list(
        Record.objects.order_by("id").values_list("id", flat=True)
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid


# --- a paused client while PostgreSQL is still writing (prefetching, COPY) -------------------

WIDE_ROWS = 25_000


def insert_wide_records(count: int) -> None:
    """Insert ``count`` records with a 5,000-character body (stored compressed, sent whole)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_record (title, body, status, key)"
            " SELECT 'wide ' || g, repeat('x', 5000), 'd', gen_random_uuid()"
            " FROM generate_series(1, %s) AS g",
            [count],
        )


def transactions_of_others(db_name: str) -> list[tuple]:
    """Return (pid, state, wait_event, query) of other sessions on ``db_name`` in a transaction."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT pid, state, wait_event, query FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND xact_start IS NOT NULL",
            [db_name],
        )
        return cursor.fetchall()


def pause_until_the_transaction_ends(db_name: str, timeout: float = 20) -> None:
    """Read nothing until no other session on ``db_name`` is in a transaction (bounded)."""
    deadline = time.monotonic() + timeout
    assert transactions_of_others(db_name), "the export is not reading rows"
    while sessions := transactions_of_others(db_name):
        assert time.monotonic() < deadline, f"the transaction outlived the pause: {sessions}"
        time.sleep(0.1)


def paused_download(path: str, db_name: str) -> Download:
    """GET ``path``, read 64 KiB, read nothing more until the export's transaction has ended
    (bounded), then read the rest."""
    conn = SmallWindowConnection(PORT, rcvbuf=4096)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = bytearray(response.read(65536))
        pause_until_the_transaction_ends(db_name)
        complete = read_rest(response, body)
    finally:
        conn.close()
    return Download(response.status, response.headers, bytes(body), complete)


def test_paused_client_of_a_prefetching_export(server, db_name):
    """The idle bound holds while PostgreSQL is blocked writing a prefetched ``FETCH``.

    With 5 KB rows and 10,000 rows per fetch the ``FETCH`` sent ahead does not fit in the
    socket buffers: while the client reads nothing the backend is ``active`` (``ClientWrite``),
    which PostgreSQL's ``idle_in_transaction_session_timeout`` never ends.  The export ends
    its session itself; the client gets the ``idle_timeout`` error record when it reads on.
    """
    insert_wide_records(WIDE_ROWS)
    download = paused_download("/faults/wide-slow-read/?format=ndjson", db_name)
    lines = ndjson_lines(download.body)
    assert lines[-1] == {
        "_type": "error",
        "error": {
            "code": "idle_timeout",
            "message": "The export was stopped because the download was read too slowly.",
        },
    }
    rows = lines[:-1]
    assert 0 < len(rows) < WIDE_ROWS
    assert [r["id"] for r in rows] == list(
        Record.objects.order_by("id").values_list("id", flat=True)[: len(rows)]
    )
    Record.objects.all().delete()
    insert_records(100)
    assert_failed_and_recovered(server, download, "idle_timeout", db_name)


@pytest.mark.skipif(not is_psycopg3, reason="COPY mode needs psycopg 3")
def test_paused_client_of_a_copy_export(server, db_name):
    """The idle bound holds for ``COPY``, one statement blocked writing to a paused client."""
    insert_wide_records(WIDE_ROWS)
    download = paused_download("/faults/wide-slow-copy/?format=csv", db_name)
    rows = parse_csv(download.body)
    assert rows[0] == ["ID", "Body"]
    assert 0 < len(rows) - 1 < WIDE_ROWS
    Record.objects.all().delete()
    insert_records(100)
    assert_failed_and_recovered(server, download, "idle_timeout", db_name)
