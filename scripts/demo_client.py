#!/usr/bin/env python3
"""Stream the demo exports over real HTTP and measure them; used by scripts/demo.

For each format it requests ``<path>?format=<format>`` with ``http.client`` (HTTP/1.1, chunked,
no compression), parses every row as it arrives (``csv`` module / ``json.loads`` per line),
and prints rows, megabytes, seconds, MB/s, the time to the response headers, to the first body
byte and to the first data row, and the gunicorn worker's resident memory before and at its peak.

It exits non-zero when a row count differs from ``--expected-rows``, when a response is not a
complete 200 (a truncated chunked body raises ``http.client.IncompleteRead``), or when a
worker's peak RSS grew by more than ``--max-rss-growth-mib`` over its RSS before the export.
Only the standard library is used.

    scripts/demo_client.py --base-url http://127.0.0.1:8000 --master-pid 1234 --expected-rows 336776
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field

# --- the gunicorn worker's memory (Linux /proc) -------------------------------------------


def worker_pids(master_pid: int) -> list[int]:
    """Return the pids of the gunicorn master's child processes (its workers)."""
    children_file = f"/proc/{master_pid}/task/{master_pid}/children"
    try:
        with open(children_file) as f:
            return sorted(int(pid) for pid in f.read().split())
    except OSError:  # kernels without CONFIG_PROC_CHILDREN: scan /proc
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # Field 4 is the ppid; the command (field 2) may contain spaces, so split after ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == master_pid:
                pids.append(int(entry))
        return sorted(pids)


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def reset_peak(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its current RSS (Linux >= 4.0); return whether it worked.

    Without the reset the peak would include everything the worker did before this export.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mib(kib: int) -> float:
    return kib / 1024


# --- one export over HTTP -----------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """Raw stream over an ``HTTPResponse`` that counts bytes and notes the first body byte.

    Reads at most one HTTP chunk per call (``read1``), so a small first chunk (the CSV header
    row, sent before the query runs) reaches the parser as soon as it arrives.
    """

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.response = response
        self.bytes = 0
        self.first_byte_at: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.response.read1(len(buffer))
        if data and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        n = len(data)
        buffer[:n] = data
        self.bytes += n
        return n


@dataclass
class Result:
    format: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    control_records: list[dict] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    headers_after: float = 0.0
    first_byte_after: float | None = None
    first_row_after: float | None = None
    errors: list[str] = field(default_factory=list)
    header: list | None = None


def stream_export(base_url: str, path: str, fmt: str, timeout: float) -> Result:
    """GET one export, parse every row, and return what was measured."""
    url = urllib.parse.urlsplit(base_url)
    query = urllib.parse.urlencode({"format": fmt})
    result = Result(format=fmt)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        started = time.perf_counter()
        # identity: measure the export itself, not a compression layer.
        conn.request("GET", f"{path}?{query}", headers={"Accept-Encoding": "identity"})
        response = conn.getresponse()
        result.headers_after = time.perf_counter() - started
        result.status = response.status
        result.headers = {k.lower(): v for k, v in response.getheaders()}
        if response.status != 200:
            body = response.read(2000).decode("utf-8", "replace")
            result.errors.append(f"HTTP {response.status}: {body.strip()[:300]}")
            return result
        raw = CountingReader(response)
        buffered = io.BufferedReader(raw, buffer_size=64 * 1024)
        try:
            if fmt == "csv":
                parse_csv(buffered, result, started)
            elif fmt == "xlsx":
                parse_xlsx(buffered, result, started)
            else:
                parse_ndjson(buffered, result, started)
        except http.client.IncompleteRead as exc:
            result.errors.append(
                f"truncated response (IncompleteRead after {raw.bytes} bytes): {exc!r}"
            )
        result.seconds = time.perf_counter() - started
        result.bytes = raw.bytes
        if raw.first_byte_at is not None:
            result.first_byte_after = raw.first_byte_at - started
    finally:
        conn.close()
    return result


def parse_csv(stream: io.BufferedReader, result: Result, started: float) -> None:
    # newline="" so quoted fields with embedded newlines reach the csv module intact.
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        result.errors.append("empty CSV body")
        return
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]  # STREAMEXPORT_CSV_BOM
    width = len(header)
    for row in reader:
        if result.first_row_after is None:
            result.first_row_after = time.perf_counter() - started
        if len(row) != width:
            result.errors.append(
                f"CSV row {result.rows + 1} has {len(row)} fields, the header has {width}"
            )
            return
        result.rows += 1


def parse_xlsx(stream: io.BufferedReader, result: Result, started: float) -> None:
    """Keep the workbook in a temporary file as it arrives, then count its rows with calamine.

    A zip is readable only once whole (its directory is at the end), so there is no first
    row time; a cut transfer fails to open.
    """
    from python_calamine import CalamineWorkbook

    with tempfile.NamedTemporaryFile(suffix=".xlsx") as file:
        while chunk := stream.read(1 << 20):
            file.write(chunk)
        file.flush()
        try:
            workbook = CalamineWorkbook.from_path(file.name)
        except Exception as exc:  # a cut or broken workbook
            result.errors.append(f"the workbook does not open: {exc}")
            return
        for name in workbook.sheet_names:
            rows = workbook.get_sheet_by_name(name).to_python()
            if rows and result.header is None:
                result.header = rows[0]
            elif rows and rows[0] != result.header:
                result.errors.append(f"sheet {name!r} does not repeat the header")
            result.rows += max(0, len(rows) - 1)


def parse_ndjson(stream: io.BufferedReader, result: Result, started: float) -> None:
    keys = None
    for line in stream:
        if result.first_row_after is None:
            result.first_row_after = time.perf_counter() - started
        if not line.endswith(b"\n"):
            result.errors.append("NDJSON body does not end with a newline")
        obj = json.loads(line)
        if not isinstance(obj, dict):
            result.errors.append(f"NDJSON line {result.rows + 1} is not an object")
            return
        if "_type" in obj:
            # A control record (STREAMEXPORT_NDJSON_END_RECORD): not a data row. "end" carries
            # the server's row count; "error" means the export failed mid-stream.
            result.control_records.append(obj)
            if obj["_type"] == "error":
                result.errors.append(f"the export failed mid-stream: {json.dumps(obj)[:300]}")
            elif obj["_type"] == "end" and obj.get("rows") != result.rows:
                result.errors.append(
                    f"end record says {obj.get('rows')} rows, {result.rows} data rows arrived"
                )
            continue
        if keys is None:
            keys = list(obj)
        elif list(obj) != keys:
            result.errors.append(f"NDJSON row {result.rows + 1} has keys {list(obj)}")
            return
        result.rows += 1


# --- the report ---------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--path", default="/exports/flights/", help="export URL path")
    parser.add_argument("--formats", default="csv,ndjson,xlsx", help="comma-separated format names")
    parser.add_argument("--master-pid", type=int, required=True, help="gunicorn master pid")
    parser.add_argument("--expected-rows", type=int, required=True, help="rows in the database")
    parser.add_argument("--max-rss-growth-mib", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="socket timeout, seconds")
    args = parser.parse_args()

    failures: list[str] = []
    print(f"Streaming {args.base_url}{args.path} ({args.expected_rows:,} rows in the database)")
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        pids = worker_pids(args.master_pid)
        if not pids:
            failures.append(f"no gunicorn worker found under master pid {args.master_pid}")
            break
        reset = {pid: reset_peak(pid) for pid in pids}
        before = {pid: memory_kib(pid)["VmRSS"] for pid in pids}

        result = stream_export(args.base_url, args.path, fmt, args.timeout)

        after = {pid: memory_kib(pid) for pid in pids if os.path.exists(f"/proc/{pid}")}
        if not after:
            failures.append(f"{fmt}: the gunicorn worker(s) {pids} died during the export")
        # The worker that served the request is the one whose peak grew most.
        served = max(after, key=lambda pid: after[pid]["VmHWM"] - before[pid], default=None)

        headers = result.headers
        print(f"\n[{fmt}] HTTP {result.status} {headers.get('content-type', '-')}")
        print(
            f"  framing: transfer-encoding={headers.get('transfer-encoding', '-')}, "
            f"content-length={headers.get('content-length', '-')}, "
            f"x-accel-buffering={headers.get('x-accel-buffering', '-')}"
        )
        megabytes = result.bytes / 1e6
        rate = megabytes / result.seconds if result.seconds else 0.0
        print(f"  rows:              {result.rows:,}")
        print(f"  size:              {megabytes:.1f} MB ({result.bytes:,} bytes)")
        print(f"  time:              {result.seconds:.2f} s")
        print(f"  throughput:        {rate:.1f} MB/s")
        print(f"  headers after:     {ms(result.headers_after)}")
        print(f"  first byte after:  {ms(result.first_byte_after)}")
        print(f"  first row after:   {ms(result.first_row_after)}")
        for record in result.control_records:
            print(f"  control record:    {json.dumps(record)[:200]}")
        if served is not None:
            growth = after[served]["VmHWM"] - before[served]
            note = "" if reset[served] else " (peak not reset: includes earlier activity)"
            print(
                f"  worker {served} RSS:  before {mib(before[served]):.1f} MiB, "
                f"peak {mib(after[served]['VmHWM']):.1f} MiB, "
                f"delta {mib(growth):+.1f} MiB{note}"
            )
            if mib(growth) > args.max_rss_growth_mib:
                failures.append(
                    f"{fmt}: worker peak RSS grew by {mib(growth):.1f} MiB "
                    f"(limit {args.max_rss_growth_mib:g} MiB): the export is not streaming"
                )
        for error in result.errors:
            failures.append(f"{fmt}: {error}")
        if result.status == 200 and result.rows != args.expected_rows:
            failures.append(
                f"{fmt}: {result.rows:,} rows received, {args.expected_rows:,} in the database"
            )

    print()
    if failures:
        for failure in failures:
            print(f"FAIL {failure}", file=sys.stderr)
        return 1
    print("OK: every row arrived, and worker memory stayed flat.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
