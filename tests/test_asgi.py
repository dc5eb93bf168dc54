"""ASGI: a real uvicorn serving exports from an async iterator (django_streamexport.asgi).

The server (tests/asgi_project) runs in a subprocess on this session's test
database and turns Django's "must consume synchronous iterators" warning into
an error, so a buffered response fails these tests instead of passing them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections

from tests.asgi_project.settings import APPLICATION_NAME
from tests.conftest import other_session, parse_csv
from tests.servers import PYTHONPATH, free_port

ROOT = Path(__file__).resolve().parent.parent
PORT = free_port()  # concurrent test runs must not collide
ROWS = 200_000
TITLE_PAD = "x" * 150

# The server commits nothing and the rows are shared by the module's tests, so
# each test only reads (in its own transaction); the fixture cleans up.
pytestmark = [pytest.mark.django_db, pytest.mark.e2e]


@contextlib.contextmanager
def uvicorn_server(port: int) -> Iterator[str]:
    """Run uvicorn on 127.0.0.1:``port`` until the block ends; yield its base URL."""
    env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.asgi_project.asgi:application",
            "--host=127.0.0.1",
            f"--port={port}",
            "--lifespan=off",
            "--no-access-log",
            "--log-level=warning",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(200):  # up to 20 s
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("uvicorn did not start listening within 20 s")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_for(condition, what: str, attempts: int = 150) -> None:
    """Poll ``condition()`` every 0.1 s until true; fail naming ``what`` after ``attempts``."""
    for _ in range(attempts):
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker) -> Iterator[str]:
    """Fill testapp_record with ``ROWS`` rows and serve the test project with uvicorn."""
    with django_db_blocker.unblock():
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "INSERT INTO testapp_record (title, status, count, day, key) "
                "SELECT 'row ' || i || ' ' || %s, 'd', i, DATE '2013-01-01' + (i %% 365), "
                "gen_random_uuid() FROM generate_series(1, %s) AS i",
                [TITLE_PAD, ROWS],
            )
        try:
            with uvicorn_server(PORT) as address:
                yield address
        finally:
            with connections["default"].cursor() as cursor:
                cursor.execute("TRUNCATE testapp_record CASCADE")


def get(address: str, path: str) -> http.client.HTTPResponse:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", path)
    return connection.getresponse()


def status(address: str) -> dict:
    response = get(address, "/status/")
    return json.loads(response.read())


def server_sessions() -> list[tuple[str, str | None, str]]:
    """Return (state, wait_event_type, query) of the server's PostgreSQL sessions."""
    with other_session() as other:
        other.execute(
            "SELECT state, wait_event_type, query FROM pg_stat_activity "
            "WHERE application_name = %s",
            [APPLICATION_NAME],
        )
        return other.fetchall()


def test_first_bytes_arrive_before_the_query_can_run_and_body_is_complete(server):
    # A lock held elsewhere blocks the export query; the header row must come anyway.
    with other_session() as locker:
        locker.execute("BEGIN")
        try:
            locker.execute("LOCK TABLE testapp_record IN ACCESS EXCLUSIVE MODE")
            response = get(server, "/records/?format=csv")
            assert response.status == 200
            assert response.getheader("Content-Type") == "text/csv; charset=utf-8"
            assert response.getheader("Content-Length") is None
            first_line = response.readline()
            assert first_line == b"ID,Record title,Count,Day\r\n"
            wait_for(
                lambda: any(wait == "Lock" for _, wait, _ in server_sessions()),
                "the export query to wait on the lock",
            )
        finally:
            locker.execute("ROLLBACK")
        # The lock is released: the rows follow.
        rest = response.read()
    rows = parse_csv(first_line + rest)
    assert len(rows) == ROWS + 1
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT id, title FROM testapp_record ORDER BY id")
        expected = [[str(pk), title] for pk, title in cursor.fetchall()]
    assert [row[:2] for row in rows[1:]] == expected
    assert status(server)["outcomes"][-1] == "complete"


def test_memory_stays_flat_while_streaming(server):
    before = status(server)["peak_rss_kib"]
    response = get(server, "/records/?format=ndjson")
    size = 0
    while chunk := response.read(256 * 1024):
        size += len(chunk)
    growth_mib = (status(server)["peak_rss_kib"] - before) / 1024
    # The body is ~40 MiB: reading it whole into memory (the sync-iterator path)
    # would raise the peak by at least that much.
    print(f"ASGI {size >> 20} MiB body, peak RSS growth {growth_mib:.1f} MiB")
    assert size > 35 * 1024 * 1024
    assert growth_mib < 15, f"peak RSS grew {growth_mib:.1f} MiB for a {size >> 20} MiB export"


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_disconnect_cancels_the_export_and_releases_cursor_and_transaction(server, fmt):
    """NDJSON reads through a cursor; CSV through COPY by default (psycopg 3)."""
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(f"GET /records/?format={fmt} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        received = 0
        while received < 512 * 1024:
            data = client.recv(65536)
            assert data, "server closed the connection early"
            received += len(data)
        # Mid-stream, the export holds a cursor (or runs its COPY) inside a transaction.
        assert any(
            state == "idle in transaction" or query.startswith(("FETCH", "DECLARE", "COPY"))
            for state, _, query in server_sessions()
        )
    # Django cancels the response task on http.disconnect.
    wait_for(lambda: status(server)["outcomes"][-1] == "disconnected", "the export to stop")
    assert status(server)["rows"][-1] < ROWS
    wait_for(
        lambda: all(state == "idle" for state, _, _ in server_sessions()),
        "the server's sessions to leave their transaction",
    )
    with other_session() as other:
        # No cursor survives: the session is idle outside a transaction and
        # its backend holds no locks on the table any more.
        other.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = %s AND l.relation = 'testapp_record'::regclass",
            [APPLICATION_NAME],
        )
        locks = other.fetchone()[0]
    assert locks == 0


def test_a_sync_iterator_under_asgi_fails_loudly_in_this_server(server):
    # The control: the same export handed over as a sync iterator trips the
    # warning filter, so the tests above would catch a regression to it.
    response = get(server, "/sync/")
    with pytest.raises(http.client.IncompleteRead):
        response.read()
