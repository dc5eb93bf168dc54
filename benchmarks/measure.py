"""Measure one approach on one data set, in this fresh process; print one JSON line.

    python -m benchmarks.measure <approach> <dataset> [--port PORT]

Approaches (see ``APPROACHES``): ``copy-psql`` (baseline A, the physical limit) runs
``psql -c "COPY (<the queryset's SQL>) TO STDOUT WITH CSV" > /dev/null``; ``copy-psql-exact``
(baseline B, the limit for the export's exact bytes) runs ``psql`` with the COPY statement
COPY mode sends (the export's text SELECT: formula escaping, ISO datetimes with offsets,
``true``/``false``); in-process approaches call the WSGI application directly and
iterate the body as a server would; ``http-*`` approaches start gunicorn with
``deploy/gunicorn.conf.py`` (one gevent worker on 127.0.0.1:PORT), read the response with a
plain socket client and the worker's memory from ``/proc/<pid>/status``.

Output keys: ``seconds`` (request to last byte), ``bytes`` (body), ``rows`` (data rows
counted from line ends), ``ttfb`` (first body byte), ``first_row`` (first complete data row),
``idle_mb`` (RSS before the export: the warmed-up worker, or this process after set-up),
``peak_mb`` (VmHWM after it), ``ours_cpu`` (the CPU time of the process that exports:
the gunicorn worker, or this process in process; ``None`` for psql) and ``machine_cpu``
(the CPU time of every process on the machine meanwhile: PostgreSQL, the client, the
kernel's network work), all times in seconds, memory in MiB.

Concurrency approaches (``CONCURRENT``), library defaults, ``EXPORTS`` (8) exports at once:
``latency-<format>`` starts gunicorn with one gevent worker and ``EXPORTS`` ``curl``
downloads of the data set (read as fast as curl can, so the exports are CPU-bound in the
worker), and while all of them stream GETs ``/ping/`` (no database) on the same worker
every 10 ms for ``WINDOW`` seconds or until the first download ends.  Keys: ``requests``,
``window`` (seconds), ``p50_ms``, ``p95_ms``, ``p99_ms``, ``max_ms``, and the worker's
share of the window on a CPU and runnable but waiting for one (``worker_cpu_share``,
``worker_runqueue_share``; ``/proc/<pid>/schedstat``) with its mean wait per turn
(``worker_runqueue_ms_per_turn``).  ``latency-psql``,
the control, pings the same idle worker while EXPORTS baseline-B COPYs run via psql: the
PostgreSQL work of 8 COPY exports without the worker streaming them.
``column-costs`` times baseline A's and B's spelling of each column alone (see
``column_costs``).
``parallel-copy-psql`` runs ``EXPORTS`` baseline-A ``psql`` COPYs at once;
``parallel-http-ours-<format>`` ``EXPORTS`` downloads at once from gunicorn with two gevent
workers.  Keys: ``seconds`` (start to the last download's end), ``rows`` and ``bytes`` (all
downloads together), ``exports``, ``workers``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: approach -> (how, URL path template); how is "psql", "wsgi" or "http".
APPROACHES = {
    "copy-psql": ("psql", ""),
    "copy-psql-exact": ("psql", "exact"),
    "ours-csv": ("wsgi", "/export/{ds}/?format=csv"),
    "ours-ndjson": ("wsgi", "/export/{ds}/?format=ndjson"),
    "ours-copy": ("wsgi", "/export/{ds}/?format=csv&copy=1"),
    "recipe": ("wsgi", "/recipe/{ds}/"),
    "buffered": ("wsgi", "/buffered/{ds}/"),
    "import-export": ("wsgi", "/import-export/{ds}/"),
    "http-ours-csv": ("http", "/export/{ds}/?format=csv"),
    "http-ours-ndjson": ("http", "/export/{ds}/?format=ndjson"),
    "http-ours-copy": ("http", "/export/{ds}/?format=csv&copy=1"),
    "http-ours-csv-python": ("http", "/export/{ds}/?format=csv&python=1"),
    "ours-csv-cursor": ("wsgi", "/export/{ds}/?format=csv&cursor=1"),
    "http-ours-csv-cursor": ("http", "/export/{ds}/?format=csv&cursor=1"),
    "http-recipe": ("http", "/recipe/{ds}/"),
    "ours-xlsx": ("wsgi", "/export/{ds}/?format=xlsx"),
    "http-ours-xlsx": ("http", "/export/{ds}/?format=xlsx"),
    "http-ours-json": ("http", "/export/{ds}/?format=json"),
    "http-ours-parquet": ("http", "/export/{ds}/?format=parquet"),
    "import-export-xlsx": ("wsgi", "/import-export/{ds}/?format=xlsx"),
}
#: approach -> (how, URL path template) for the concurrency figures.
CONCURRENT = {
    "latency-csv": ("latency", "/export/{ds}/?format=csv"),
    "latency-ndjson": ("latency", "/export/{ds}/?format=ndjson"),
    "parallel-copy-psql": ("parallel-psql", ""),
    "parallel-http-ours-csv": ("parallel-http", "/export/{ds}/?format=csv"),
    "parallel-http-ours-ndjson": ("parallel-http", "/export/{ds}/?format=ndjson"),
    "latency-psql": ("latency-psql", ""),
    "latency-csv-pinned": ("latency-pinned", "/export/{ds}/?format=csv"),
    "latency-ndjson-pinned": ("latency-pinned", "/export/{ds}/?format=ndjson"),
    "column-costs": ("costs", ""),
}
#: Exports running at once in the concurrency figures, and gunicorn workers serving them
#: in the parallel ones (one per core of the 2-core machine the figures come from).
EXPORTS = 8
PARALLEL_WORKERS = 2
#: Seconds between the starts of the parallel downloads (see staggered()).
STAGGER = 0.1
#: Seconds the latency figures ping for (less if an export ends sooner), and between pings.
WINDOW = 6.0
INTERVAL = 0.01
#: The session the export's COPY runs in (``postgresql/text.py`` ``SESSION_SQL``), for B.
EXACT_SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1; "
    "SET jit = off; SET max_parallel_workers_per_gather = 0; "
)
#: Runs of each statement in ``column-costs``; the fastest counts.
COST_RUNS = 3
#: Binary approaches: the body is kept in a file and its rows counted by reading it back
#: after the timing (they have no line ends to count, and no first-row time).
BINARY = {"xlsx", "parquet"}


def status_mb(pid: int | str = "self") -> dict[str, float]:
    """Return VmRSS and VmHWM of process ``pid`` in MiB (Linux ``/proc``)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def binary_kind(approach: str) -> str | None:
    """Return ``"xlsx"`` or ``"parquet"`` for an approach with a binary body, else ``None``."""
    return next((kind for kind in BINARY if approach.endswith(kind)), None)


class Counter:
    """Count body bytes and line ends; note when the first byte and first data row arrive.

    A binary body (XLSX, Parquet) is written to a temporary file instead, its rows counted
    by :meth:`binary_rows` once the timing is over.
    """

    def __init__(self, started: float, header_lines: int, approach: str = "") -> None:
        self.started = started
        self.rows_at = header_lines + 1
        self.bytes = 0
        self.lines = 0
        self.ttfb: float | None = None
        self.first_row: float | None = None
        self.kind = binary_kind(approach)
        self.file = None
        if self.kind:
            self.path = Path(f"/tmp/streamexport-bench-{os.getpid()}.{self.kind}")
            self.file = open(self.path, "wb")

    def feed(self, data: bytes) -> None:
        if not data:
            return
        now = time.perf_counter()
        if self.ttfb is None:
            self.ttfb = now - self.started
        self.bytes += len(data)
        if self.file is not None:
            self.file.write(data)
            return
        self.lines += data.count(b"\n")
        if self.first_row is None and self.lines >= self.rows_at:
            self.first_row = now - self.started

    def binary_rows(self) -> int:
        """Return the data rows of the binary body, read back with calamine or pyarrow."""
        assert self.file is not None
        self.file.close()
        try:
            if self.kind == "parquet":
                import pyarrow.parquet

                return pyarrow.parquet.ParquetFile(self.path).metadata.num_rows
            from python_calamine import CalamineWorkbook

            workbook = CalamineWorkbook.from_path(str(self.path))
            return sum(workbook.get_sheet_by_name(name).height - 1 for name in workbook.sheet_names)
        finally:
            self.path.unlink()


def header_lines(approach: str) -> int:
    return 0 if "ndjson" in approach else 1


def exact_copy_statement(queryset, fields) -> str:
    """Return the COPY statement COPY mode sends for this export (baseline B), composed."""
    from django.db import connection

    from django_streamexport.columns import compile_query
    from django_streamexport.plan import build_plan
    from django_streamexport.postgresql.copy import copy_statement

    plan = build_plan(queryset, fields=fields, format="csv", copy_mode="require")
    statement, params = copy_statement(plan, compile_query(plan.queryset, plan.columns, "default"))
    return connection.ops.compose_sql(statement, params)


def copy_command(ds: str, exact: bool = False) -> list[str]:
    """Return the ``psql`` command of baseline A (or B, ``exact``) on data set ``ds``."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from django.db import connection

    from benchmarks.datasets import dataset

    queryset, fields = dataset(ds)
    with connection.cursor():
        if exact:
            # The session the export's COPY runs in (postgresql/text.py SESSION_SQL).
            statement = EXACT_SESSION + exact_copy_statement(queryset, fields)
        else:
            sql, params = queryset.values_list(*fields).query.get_compiler("default").as_sql()
            statement = f"COPY ({connection.ops.compose_sql(sql, params)}) TO STDOUT WITH CSV"
    command = psql_command(statement)
    connection.close()
    return command


def psql_command(statement: str) -> list[str]:
    """Return the ``psql`` command that runs ``statement`` on the benchmark database."""
    from django.db import connection

    settings = connection.settings_dict
    return [
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
        "-h", settings["HOST"], "-p", str(settings["PORT"]), "-U", settings["USER"],
        "-d", settings["NAME"],
        "-c", statement,
    ]  # fmt: skip


def timed_psql(statement: str, runs: int = COST_RUNS) -> float:
    """Return the fastest of ``runs`` runs of ``statement`` via psql into /dev/null, seconds."""
    command = psql_command(statement)
    best = math.inf
    with open(os.devnull, "wb") as devnull:
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(command, stdout=devnull, check=True)
            best = min(best, time.perf_counter() - started)
    return best


def column_costs(ds: str) -> dict:
    """Time what spelling each column costs PostgreSQL: B's expression against A's, alone.

    For each export column, ``COPY (SELECT <the column> FROM (<the queryset's SQL>) ...)``
    (A's spelling: the type's own output function) and ``COPY`` of COPY mode's expression
    for that column (B's), both via psql into /dev/null, the fastest of ``COST_RUNS``
    runs each, in the session B runs in.  ``scan`` is ``COPY (SELECT 1 FROM ...)``: reading
    the rows and sending a one-byte line each, the cost every column shares.  Keys:
    ``scan`` (seconds), ``columns`` (name, kind, ``a`` and ``b`` seconds).
    """
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from django.db import connection

    from benchmarks.datasets import dataset
    from django_streamexport.columns import compile_query
    from django_streamexport.plan import build_plan
    from django_streamexport.postgresql.text import column_sql

    queryset, fields = dataset(ds)
    plan = build_plan(queryset, fields=fields, format="csv", copy_mode="require")
    with connection.cursor():
        query = compile_query(plan.queryset, plan.columns, "default")
        inner = connection.ops.compose_sql(query.sql, query.params)
        names = ", ".join(f"c{index}" for index in range(query.width))

        def copy(expression: str) -> str:
            return (
                EXACT_SESSION
                + f"COPY (SELECT {expression} FROM ({inner}) AS se({names})) TO STDOUT WITH CSV"
            )

        scan = timed_psql(copy("1"))
        columns = []
        for position, column in enumerate(plan.columns):
            spelled, params = column_sql(
                column, f"se.c{position}", plan.format, utc=True, typed=True
            )
            if params:
                spelled = connection.ops.compose_sql(spelled, params)
            columns.append({
                "name": column.name, "kind": column.kind,
                "a": timed_psql(copy(f"se.c{position}")), "b": timed_psql(copy(spelled)),
            })  # fmt: skip
    connection.close()
    return {"scan": scan, "columns": columns, "runs": COST_RUNS}


def copy_psql(ds: str, exact: bool = False) -> dict:
    command = copy_command(ds, exact)
    out = Path(f"/tmp/streamexport-bench-{os.getpid()}.csv")
    cpu = machine_cpu()
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        subprocess.run(command, stdout=devnull, check=True)
    seconds = time.perf_counter() - started
    cpu = machine_cpu() - cpu
    # Size and rows from a second run into a file (not timed).
    with open(out, "wb") as sink:
        subprocess.run(command, stdout=sink, check=True)
    data_bytes = out.stat().st_size
    with open(out, "rb") as sink:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: sink.read(1 << 20), b""))
    out.unlink()
    return {"seconds": seconds, "bytes": data_bytes, "rows": rows, "ttfb": None,
            "first_row": None, "idle_mb": None, "peak_mb": None, "machine_cpu": cpu,
            "ours_cpu": None}  # fmt: skip


def in_process(approach: str, url: str) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    application = WSGIHandler()
    path, _, query = url.partition("?")

    def environ(path: str, query: str) -> dict:
        return {
            "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1",
            "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }  # fmt: skip

    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(f"{url} answered {status}")

    # Warm up (imports, URL resolver, database connection), then measure from here.
    b"".join(application(environ("/ping/", ""), start_response))
    idle = status_mb()["VmRSS"]
    cpu, ours = machine_cpu(), time.process_time()
    started = time.perf_counter()
    counter = Counter(started, header_lines(approach), approach)
    body = application(environ(path, query), start_response)
    try:
        for chunk in body:
            counter.feed(chunk)
    finally:
        close = getattr(body, "close", None)
        if close:
            close()
    seconds = time.perf_counter() - started
    cpu, ours = machine_cpu() - cpu, time.process_time() - ours
    outcome = result(counter, seconds, idle, status_mb()["VmHWM"], approach)
    return {**outcome, "machine_cpu": cpu, "ours_cpu": ours}


def result(counter: Counter, seconds: float, idle: float, peak: float, approach: str) -> dict:
    if counter.kind:
        rows = counter.binary_rows()
    elif approach.endswith("-json"):
        rows = counter.lines - 2  # "[", then one row per line, then "]"
    else:
        rows = counter.lines - header_lines(approach)
    return {
        "seconds": seconds, "bytes": counter.bytes,
        "rows": rows, "ttfb": counter.ttfb,
        "first_row": counter.first_row, "idle_mb": idle, "peak_mb": peak,
    }  # fmt: skip


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {children}")
    return int(children[0])


def free_port(first: int, count: int = 50) -> int:
    """Return the first port in ``first .. first + count - 1`` free on 127.0.0.1."""
    for port in range(first, first + count):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{first + count - 1}")


@contextlib.contextmanager
def gunicorn_serving(port: int, workers: int = 1) -> Iterator[tuple[subprocess.Popen, int]]:
    """Run gunicorn (``deploy/gunicorn.conf.py``, ``workers`` gevent workers) on the benchmark
    project at the first free port from ``port``; yield (the master, its port) once it answers."""
    port = free_port(port)
    env = dict(
        os.environ,
        GUNICORN_WORKERS=str(workers),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_LOGLEVEL="warning",
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
        PYTHONPATH=str(REPO),
    )
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen(
        [str(gunicorn), "-c", str(REPO / "deploy" / "gunicorn.conf.py"),
         "--access-logfile", "/dev/null", "benchmarks.wsgi:application"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/ping/")
                response = connection.getresponse()
                response.read()
                connection.close()
                if response.status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start: {server.stderr.read().decode()}")
            time.sleep(0.1)
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        while len(children.read_text().split()) < workers and time.monotonic() < deadline:
            time.sleep(0.1)  # every worker booted, not just the one that answered
        time.sleep(0.5)  # the other workers load the application
        yield server, port
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def over_http(approach: str, url: str, port: int) -> dict:
    with gunicorn_serving(port) as (server, port):
        pid = worker_pid(server.pid)
        idle = status_mb(pid)["VmRSS"]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        cpu, ours = machine_cpu(), cpu_seconds(pid)
        started = time.perf_counter()
        counter = Counter(started, header_lines(approach), approach)
        connection.request("GET", url, headers={"Connection": "close"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {response.read()[:500]!r}")
        while data := response.read1(1 << 20):
            counter.feed(data)
        seconds = time.perf_counter() - started
        cpu, ours = machine_cpu() - cpu, cpu_seconds(pid) - ours
        connection.close()
        peak = status_mb(pid)["VmHWM"]
        return {**result(counter, seconds, idle, peak, approach), "machine_cpu": cpu,
                "ours_cpu": ours}  # fmt: skip


def cpu_seconds(pid: int | str) -> float:
    """Return the CPU time (user + system) process ``pid`` has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """Return the CPU time every process on the machine has used so far, in seconds
    (all CPUs; user, nice, system, interrupts and steal of ``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def schedstat(pid: int) -> tuple[float, float, int]:
    """Return (seconds on a CPU, seconds runnable but waiting for one, turns on a CPU) of
    process ``pid``'s main thread so far (Linux ``/proc/<pid>/schedstat``)."""
    on_cpu, waiting, turns = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9, int(turns)


def curl(url: str) -> subprocess.Popen:
    """Start a ``curl`` download of ``url`` into nothing; it prints the bytes it received."""
    return subprocess.Popen(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}",
         "--max-time", "600", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def exports_running() -> int:
    """Return the sessions on the benchmark database holding an open transaction (exports)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def timed_ping(port: int) -> float:
    """GET ``/ping/`` on a new connection, read the whole answer; return the seconds it took."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /ping/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = bytearray()
        while data := sock.recv(65536):
            answer += data
    elapsed = time.perf_counter() - started
    if not answer.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(f"/ping/ answered {bytes(answer[:200])!r}")
    return elapsed


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile of sorted ``values`` (0 < p <= 100)."""
    return values[max(1, math.ceil(p / 100 * len(values))) - 1]


def export_backends() -> list[int]:
    """Return the process ids of the backends running the exports (see :func:`exports_running`)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


def latency(url: str, port: int, control: str | None = None, pinned: bool = False) -> dict:
    """Time small requests on one gevent worker while EXPORTS downloads of ``url`` stream.

    With ``control`` (a data set) the worker streams nothing: EXPORTS baseline-B COPYs of
    that data set run via psql into /dev/null instead, so the figure is what the same
    PostgreSQL work on the same cores costs a small request, the worker aside.  With
    ``pinned``, the worker gets CPU 0 to itself and the exports' PostgreSQL backends, the
    downloads and this process share the others, as with the database on another machine:
    what is left is the worker's own fairness between its greenlets.
    """
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    with gunicorn_serving(port) as (server, port):
        worker = worker_pid(server.pid)
        if control is not None:
            command = copy_command(control, exact=True)
            downloads = [
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(EXPORTS)
            ]
        else:
            downloads = [curl(f"http://127.0.0.1:{port}{url}") for _ in range(EXPORTS)]
        try:
            deadline = time.monotonic() + 60
            while exports_running() < EXPORTS:  # every export has its transaction open
                if time.monotonic() > deadline or any(d.poll() is not None for d in downloads):
                    raise RuntimeError(f"{EXPORTS} exports of {url} did not all start")
                time.sleep(0.05)
            if pinned:
                others = set(range(1, os.cpu_count() or 1)) or {0}
                for pid in [*export_backends(), *(d.pid for d in downloads), os.getpid()]:
                    os.sched_setaffinity(pid, others)
                os.sched_setaffinity(worker, {0})
            seconds: list[float] = []
            started = time.monotonic()
            ran, waited, turns = schedstat(worker)
            while time.monotonic() < started + WINDOW:
                took = timed_ping(port)
                if any(d.poll() is not None for d in downloads):
                    break  # an export ended while this request ran: not counted
                seconds.append(took)
                time.sleep(INTERVAL)
            window = time.monotonic() - started
            ran, waited, turns = (
                now - then
                for now, then in zip(schedstat(worker), (ran, waited, turns), strict=True)
            )
        finally:
            for download in downloads:
                download.terminate()
                download.wait(timeout=30)
    if not seconds:
        raise RuntimeError(f"the exports of {url} ended before any request was measured")
    seconds.sort()
    return {
        "exports": EXPORTS, "workers": 1, "requests": len(seconds), "window": window,
        **{f"p{p}_ms": percentile(seconds, p) * 1000 for p in (50, 95, 99)},
        "max_ms": seconds[-1] * 1000,
        "worker_cpu_share": ran / window, "worker_runqueue_share": waited / window,
        "worker_runqueue_ms_per_turn": waited / max(1, turns) * 1000,
    }  # fmt: skip


def staggered(start: Callable[[], subprocess.Popen]) -> list[subprocess.Popen]:
    """Start EXPORTS processes with ``start()``, STAGGER seconds apart.

    Arriving all at once, the downloads would mostly be accepted by one gevent worker
    (gunicorn's workers race to ``accept()`` on a shared socket, and the one awake takes
    the next connection too); spread out, each goes to a worker not busy rendering, as
    requests arriving over time do.  The baseline is started the same way.
    """
    processes = []
    for index in range(EXPORTS):
        if index:
            time.sleep(STAGGER)
        processes.append(start())
    return processes


def finish_parallel(processes: list[subprocess.Popen], started: float) -> tuple[float, list[str]]:
    """Wait for every process; return (seconds since ``started`` to the last end, outputs)."""
    outputs = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode:
            raise RuntimeError(f"{process.args[0]} failed ({process.returncode}): {err[-2000:]}")
        outputs.append(out)
    return time.perf_counter() - started, outputs


def table_rows(ds: str) -> int:
    """Return the rows of data set ``ds`` (counted by the database, not timed)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from benchmarks.datasets import dataset

    return dataset(ds)[0].count()


def parallel_psql(ds: str) -> dict:
    """Run EXPORTS baseline-A COPYs via ``psql`` at once; time them from start to last end."""
    command = copy_command(ds)
    rows = table_rows(ds)
    counter = "set -o pipefail; " + " ".join(shlex.quote(part) for part in command) + " | wc -c"
    started = time.perf_counter()
    processes = staggered(
        lambda: subprocess.Popen(
            ["bash", "-c", counter], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    )
    seconds, outputs = finish_parallel(processes, started)
    return {"seconds": seconds, "rows": rows * EXPORTS, "exports": EXPORTS, "workers": None,
            "bytes": sum(int(out) for out in outputs)}  # fmt: skip


def parallel_http(ds: str, url: str, port: int) -> dict:
    """Download ``url`` EXPORTS times at once from gunicorn with PARALLEL_WORKERS workers."""
    rows = table_rows(ds)
    with gunicorn_serving(port, PARALLEL_WORKERS) as (server, port):
        workers = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        before = [cpu_seconds(pid) for pid in workers]
        started = time.perf_counter()
        downloads = staggered(lambda: curl(f"http://127.0.0.1:{port}{url}"))
        seconds, outputs = finish_parallel(downloads, started)
        cpu = [cpu_seconds(pid) - used for pid, used in zip(workers, before, strict=True)]
    sizes = {int(out) for out in outputs}
    if len(sizes) != 1:
        raise RuntimeError(f"the {EXPORTS} downloads of {url} differ in size: {sorted(sizes)}")
    return {"seconds": seconds, "rows": rows * EXPORTS, "exports": EXPORTS,
            "workers": PARALLEL_WORKERS, "bytes": sum(int(out) for out in outputs),
            "worker_cpu_seconds": cpu}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    # Run the finally blocks (stop gunicorn) when the runner is interrupted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("approach", choices=sorted({**APPROACHES, **CONCURRENT}))
    parser.add_argument("dataset")
    parser.add_argument("--port", type=int, default=18500)
    args = parser.parse_args(argv)
    how, template = {**APPROACHES, **CONCURRENT}[args.approach]
    url = template.format(ds=args.dataset)
    if how == "latency":
        outcome = latency(url, args.port)
    elif how == "latency-pinned":
        outcome = latency(url, args.port, pinned=True)
    elif how == "latency-psql":
        outcome = latency(url, args.port, args.dataset)
    elif how == "costs":
        outcome = column_costs(args.dataset)
    elif how == "parallel-psql":
        outcome = parallel_psql(args.dataset)
    elif how == "parallel-http":
        outcome = parallel_http(args.dataset, url, args.port)
    elif how == "psql":
        outcome = copy_psql(args.dataset, exact=template == "exact")
    elif how == "wsgi":
        outcome = in_process(args.approach, url)
    else:
        outcome = over_http(args.approach, url, args.port)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
