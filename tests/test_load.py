"""50 concurrent exports against one gunicorn gevent worker with an admission limit of 10.

Every admitted export is complete and correct, every refused one is a 429 with
``Retry-After`` and no body of data; the worker's memory stays flat across
rounds, and no database session is left behind, also with persistent connections.
Small requests keep being answered while 8 exports stream from the worker with the
library's defaults (counted here; their latency is a benchmark figure, benchmarks/run.py).
"""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connections

from tests.conftest import parse_csv
from tests.servers import (
    SmallWindowConnection,
    free_port,
    get,
    gunicorn,
    insert_records,
    other_sessions,
    ping_while_exporting,
    wait_for,
    wait_for_no_sessions,
)
from tests.testapp.models import Record

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

# Free loopback ports picked at import: concurrent test runs must not collide.
PORT = free_port()
CONN_MAX_AGE_PORT = free_port()
PING_PORT = free_port()
LIMIT = 10
CLIENTS = 50
ROUNDS = 3
ROWS = 2000

#: Counted across the rounds, for the closing report.
STATS = {"requests": 0, "admitted": 0, "refused": 0, "failures": 0}


def run_round(expected_ids: list[int]) -> tuple[int, int]:
    """Start CLIENTS downloads at once; check each; return (admitted, refused)."""
    barrier = threading.Barrier(CLIENTS)
    results: list = [None] * CLIENTS

    def client(i: int) -> None:
        fmt = "ndjson" if i % 2 else "csv"
        barrier.wait(timeout=30)
        try:
            results[i] = (fmt, get(PORT, f"/faults/load/?format={fmt}"))
        except Exception as exc:  # reported below
            results[i] = (fmt, exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    admitted = refused = 0
    for fmt, download in results:
        STATS["requests"] += 1
        if isinstance(download, Exception):
            STATS["failures"] += 1
            raise AssertionError(f"client error: {download!r}")
        if download.status == 429:
            refused += 1
            assert download.complete
            assert int(download.headers["Retry-After"]) > 0
            assert download.body.startswith(b"Too many exports are running (10 at most)")
            continue
        admitted += 1
        if download.status != 200 or not download.complete:
            STATS["failures"] += 1
        assert download.status == 200 and download.complete, download
        if fmt == "csv":
            rows = parse_csv(download.body)
            assert [int(row[0]) for row in rows[1:]] == expected_ids
        else:
            lines = [json.loads(line) for line in download.body.decode().splitlines()]
            assert lines[-1] == {"_type": "end", "rows": len(expected_ids)}
            assert [line["id"] for line in lines[:-1]] == expected_ids
    STATS["admitted"] += admitted
    STATS["refused"] += refused
    return admitted, refused


def test_fifty_concurrent_exports_one_worker(django_db_setup, tmp_path):
    insert_records(ROWS)
    expected_ids = list(Record.objects.order_by("id").values_list("id", flat=True))
    db_name = connections["default"].settings_dict["NAME"]
    with gunicorn(PORT, tmp_path, STREAMEXPORT_MAX_CONCURRENT_EXPORTS=str(LIMIT)) as server:
        rss = []
        for _ in range(ROUNDS):
            admitted, refused = run_round(expected_ids)
            assert admitted + refused == CLIENTS
            # Each export lasts about a second, so the 50 overlap: the cap decides.
            assert admitted >= LIMIT and refused > 0, (admitted, refused)
            wait_for_no_sessions(db_name)
            rss.append(server.worker_rss_kib())
        # Slots came back: sequential exports are all admitted.
        for _ in range(LIMIT + 2):
            assert get(PORT, "/faults/load/?format=csv").status == 200
        wait_for_no_sessions(db_name)
        log = server.log()
    # Memory flat: after a warm-up round, later rounds add less than 8 MiB.
    assert rss[-1] - rss[0] < 8 * 1024, rss
    assert "Traceback" not in log
    print(f"load: {STATS}, worker RSS KiB per round {rss}")


def head(port: int, path: str) -> int:
    conn = SmallWindowConnection(port)
    try:
        conn.request("HEAD", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_persistent_connections_do_not_pile_up_under_gevent(django_db_setup, tmp_path):
    """With ``CONN_MAX_AGE > 0`` each greenlet would keep its own connection, never reused
    once its client has gone: the export's connection is closed when the export ends, so
    after many concurrent and sequential exports the sessions are back to the baseline."""
    insert_records(300)
    expected_ids = list(Record.objects.order_by("id").values_list("id", flat=True))
    db_name = connections["default"].settings_dict["NAME"]
    concurrent, sequential = 30, 40
    with gunicorn(CONN_MAX_AGE_PORT, tmp_path, STREAMEXPORT_SERVER_CONN_MAX_AGE="600") as server:
        baseline = len(other_sessions(db_name))
        barrier = threading.Barrier(concurrent)
        results: list = [None] * concurrent

        def client(i: int) -> None:
            barrier.wait(timeout=30)
            try:
                results[i] = get(CONN_MAX_AGE_PORT, "/faults/load/?format=csv")
            except Exception as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrent)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for i in range(sequential):
            results.append(get(CONN_MAX_AGE_PORT, "/records/export/?format=csv"))
            if i % 10 == 0:
                assert head(CONN_MAX_AGE_PORT, "/records/export/?format=csv") == 200
        for download in results:
            assert not isinstance(download, Exception), download
            assert download.status == 200 and download.complete, download
            assert [int(row[0]) for row in parse_csv(download.body)[1:]] == expected_ids
        wait_for(
            lambda: len(other_sessions(db_name)) <= baseline,
            10,
            lambda: f"{len(other_sessions(db_name))} sessions left, {baseline} before",
        )
        log = server.log()
    assert "Traceback" not in log
    # And the worker said so at start-up (check W004).
    assert "django_streamexport.W004: DATABASES['default'] sets CONN_MAX_AGE = 600" in log


def test_small_requests_are_answered_while_eight_exports_stream(django_db_setup, tmp_path):
    """One gevent worker, the library's defaults (2000 rows per fetch, 64 KiB chunks, the
    2 ms time slice): a request without database, sent every 10 ms, keeps being answered
    while 8 NDJSON exports (values formatted in Python: CPU-bound) stream from the same
    worker as fast as ``curl`` reads.  Counted, never timed: the p50/p99 of those requests
    are benchmark figures (benchmarks/run.py, ``latency-ndjson``)."""
    insert_records(100_000)  # 8 exports of them outlast 20 requests
    db_name = connections["default"].settings_dict["NAME"]
    connections["default"].close()  # only the exports' sessions are waited for, then out
    with gunicorn(PING_PORT, tmp_path) as server:
        latencies = ping_while_exporting(
            f"http://127.0.0.1:{PING_PORT}/records/export/?format=ndjson",
            PING_PORT,
            db_name,
            ping_path="/ping/",
            requests=20,
            window=120,  # a bound for a stuck worker, not a measure
        )
        log = server.log()
    print(f"small requests beside 8 exports: {latencies.summary()}")
    # 20 answered with a 200 (ping_while_exporting checks) before any of the 8 exports
    # ended: counted against the exports' length, not the clock.
    assert len(latencies.seconds) >= 20, latencies.summary()
    assert "Traceback" not in log
