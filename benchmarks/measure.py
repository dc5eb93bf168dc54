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
``idle_mb`` (RSS before the export: the warmed-up worker, or this process after set-up) and
``peak_mb`` (VmHWM after it), all times in seconds, memory in MiB.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
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


def copy_psql(ds: str, exact: bool = False) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    django.setup()
    from django.db import connection

    from benchmarks.datasets import dataset

    queryset, fields = dataset(ds)
    with connection.cursor():
        if exact:
            # The session the export's COPY runs in (postgresql/text.py SESSION_SQL).
            setup = (
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1; "
                "SET jit = off; SET max_parallel_workers_per_gather = 0; "
            )
            statement = setup + exact_copy_statement(queryset, fields)
        else:
            sql, params = queryset.values_list(*fields).query.get_compiler("default").as_sql()
            statement = f"COPY ({connection.ops.compose_sql(sql, params)}) TO STDOUT WITH CSV"
    settings = connection.settings_dict
    command = [
        "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
        "-h", settings["HOST"], "-p", str(settings["PORT"]), "-U", settings["USER"],
        "-d", settings["NAME"],
        "-c", statement,
    ]  # fmt: skip
    connection.close()
    out = Path(f"/tmp/streamexport-bench-{os.getpid()}.csv")
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        subprocess.run(command, stdout=devnull, check=True)
    seconds = time.perf_counter() - started
    # Size and rows from a second run into a file (not timed).
    with open(out, "wb") as sink:
        subprocess.run(command, stdout=sink, check=True)
    data_bytes = out.stat().st_size
    with open(out, "rb") as sink:
        rows = sum(chunk.count(b"\n") for chunk in iter(lambda: sink.read(1 << 20), b""))
    out.unlink()
    return {"seconds": seconds, "bytes": data_bytes, "rows": rows, "ttfb": None,
            "first_row": None, "idle_mb": None, "peak_mb": None}  # fmt: skip


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
    return result(counter, seconds, idle, status_mb()["VmHWM"], approach)


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


def over_http(approach: str, url: str, port: int) -> dict:
    port = free_port(port)
    env = dict(
        os.environ,
        GUNICORN_WORKERS="1",
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
        pid = worker_pid(server.pid)
        idle = status_mb(pid)["VmRSS"]
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        started = time.perf_counter()
        counter = Counter(started, header_lines(approach), approach)
        connection.request("GET", url, headers={"Connection": "close"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {response.read()[:500]!r}")
        while data := response.read1(1 << 20):
            counter.feed(data)
        seconds = time.perf_counter() - started
        connection.close()
        peak = status_mb(pid)["VmHWM"]
        return result(counter, seconds, idle, peak, approach)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> None:
    # Run the finally blocks (stop gunicorn) when the runner is interrupted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("approach", choices=sorted(APPROACHES))
    parser.add_argument("dataset")
    parser.add_argument("--port", type=int, default=18500)
    args = parser.parse_args(argv)
    how, template = APPROACHES[args.approach]
    url = template.format(ds=args.dataset)
    if how == "psql":
        outcome = copy_psql(args.dataset, exact=template == "exact")
    elif how == "wsgi":
        outcome = in_process(args.approach, url)
    else:
        outcome = over_http(args.approach, url, args.port)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main()
