"""The example project's background export of the flights, multiplied, queued from the admin.

    python benchmarks/jobs_flights.py                  # flights x10 (3,367,760 rows), CSV, local
    python benchmarks/jobs_flights.py --s3             # the same job into SeaweedFS's S3
    python benchmarks/jobs_flights.py --multiply 3 --format xlsx

What a staff user does, with real parts: the example project on PostgreSQL (its own database,
``--db``, created and loaded with ``loadflights --multiply N`` once and kept for the next run;
``--drop`` drops it at the end), a real ``db_worker`` process (django-tasks-db) started with
the example settings, and the admin export page's "Run in the background" (a ``POST`` with the
CSRF check off, through Django's test client). It prints the job's progress as the worker
reports it, then: the job's time, the streamed download of the same export from the same
page (in this process) for comparison, the worker's peak RSS and its growth over the idle
worker (``VmHWM`` and ``VmRSS`` from /proc; idle is measured after a one-row job, so it
includes what any export imports, such as boto3), and whether the stored file equals the streamed
download byte for byte and has one line per flight. With ``--s3``: the number of multipart
parts (the object's ETag ``-N``) and the download through the signed URL.
Nothing is asserted here: tests/test_jobs*.py have the tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "example_project"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

FLIGHTS = 336_776

from benchmarks.jobs import proc_kib  # noqa: E402  (after sys.path)


def descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    children = [int(p) for p in found.split()]
    return [c for child in children for c in (child, *descendants(child))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiply", type=int, default=10)
    parser.add_argument("--format", default="csv", choices=["csv", "ndjson", "json", "xlsx"])
    parser.add_argument("--db", default="streamexport_bench_jobs_flights")
    parser.add_argument("--s3", action="store_true", help="write the job into SeaweedFS's S3")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="se-jobs-flights-"))
    env = {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.db}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'example_project'}",
    }
    os.environ.update(env)
    s3 = None
    try:
        if args.s3:
            from tests.job_servers import seaweedfs

            s3_context = seaweedfs(work / "seaweedfs")
            s3 = s3_context.__enter__()
            os.environ.update(
                EXPORTS_S3_ENDPOINT_URL=s3.endpoint,
                EXPORTS_S3_BUCKET=s3.bucket,
                EXPORTS_S3_ACCESS_KEY=s3.access_key,
                EXPORTS_S3_SECRET_KEY=s3.secret_key,
            )
        run(args, work, s3)
    finally:
        if s3 is not None:
            s3_context.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
        if args.drop:
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", args.db])


def run(args: argparse.Namespace, work: Path, s3) -> None:
    manage = [sys.executable, str(REPO / "example_project" / "manage.py")]
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", args.db], capture_output=True)
    subprocess.run([*manage, "migrate", "-v0"], check=True)

    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.files.storage import storages
    from django.db import connection
    from django.test import Client
    from flights.models import Flight

    from django_streamexport.jobs.models import ExportJob

    want = FLIGHTS * args.multiply
    if Flight.objects.count() != want:
        started = time.perf_counter()
        subprocess.run([*manage, "loadflights", "--replace", "--multiply", str(args.multiply)],
                       check=True)  # fmt: skip
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE flights_flight")
        print(f"loaded {want:,} flights in {time.perf_counter() - started:.0f} s")
    user = User.objects.filter(username="bench-staff").first() or User.objects.create_superuser(
        "bench-staff", "bench@example.com", "pw"
    )
    client = Client(HTTP_HOST="127.0.0.1")  # one of the example project's ALLOWED_HOSTS
    client.force_login(user)
    page = "/admin/flights/flight/export/"

    worker = subprocess.Popen(
        [*manage, "db_worker", "--no-reload", "--no-startup-delay", "--interval", "0.5"],
        stdout=open(work / "worker.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        # Warm up: one small job first (one flight), so the worker has imported what any
        # export needs (the storage's client: boto3 for S3, some 40 MB) before the
        # measurement; a long-running worker has.  Then its RSS, idle.
        client.post(page, {"format": args.format, "_background": "1",
                           "_changelist_filters": "id__exact=1"})  # fmt: skip
        warm = ExportJob.objects.latest("created_at")
        while not warm.is_finished:
            time.sleep(0.5)
            warm.refresh_from_db()
        time.sleep(2)
        idle = proc_kib([worker.pid, *descendants(worker.pid)], "VmRSS")
        queued = time.perf_counter()
        response = client.post(page, {"format": args.format, "_background": "1"})
        assert response.status_code == 302, response.content[:500]
        job = ExportJob.objects.latest("created_at")
        print(f"queued job {job.pk} ({response['Location']})")
        shown = -1.0
        while not job.is_finished:
            time.sleep(1)
            job.refresh_from_db()
            if job.progress is not None and job.progress - shown >= 0.1:
                shown = job.progress
                print(f"  {job.status}: {job.rows:,} rows, {job.progress:.0%} of the estimate")
        waited = time.perf_counter() - queued
        pids = [worker.pid, *descendants(worker.pid)]
        peak = proc_kib(pids, "VmHWM")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(f"job {job.status}: {job.rows:,} rows, {job.bytes / 1e6:.0f} MB")
    assert job.status == "complete", (job.error_code, job.error_message)

    started = time.perf_counter()
    streamed = client.get(page, {"format": args.format})
    digest, size = hashlib.sha256(), 0
    for chunk in streamed.streaming_content:
        digest.update(chunk)
        size += len(chunk)
    streamed_seconds = time.perf_counter() - started

    stored, lines = hashlib.sha256(), 0
    if s3 is not None:
        download = client.get(f"/admin/streamexport_jobs/exportjob/{job.pk}/download/")
        with urllib.request.urlopen(download["Location"]) as body:  # the signed URL
            while block := body.read(1 << 20):
                stored.update(block)
                lines += block.count(b"\n")
        head = s3.client().head_object(Bucket=s3.bucket, Key=job.file_name)
        parts = head["ETag"].strip('"').rpartition("-")[2]
    else:
        with storages[job.storage].open(job.file_name, "rb") as file:
            while block := file.read(1 << 20):
                stored.update(block)
                lines += block.count(b"\n")
        parts = "-"
    same = stored.hexdigest() == digest.hexdigest() if args.format != "xlsx" else "n/a (zip)"
    seconds = (job.finished_at - job.started_at).total_seconds()
    print(
        f"\n| {want:,} flights, {args.format}, {'S3' if s3 else 'local'} | |\n|---|--:|\n"
        f"| job (started to finished) | {seconds:.1f} s |\n"
        f"| queued to complete | {waited:.1f} s |\n"
        f"| streamed download of the same export, in process | {streamed_seconds:.1f} s |\n"
        f"| worker peak RSS | {peak / 1024:.0f} MiB |\n"
        f"| worker RSS growth over idle | {(peak - idle) / 1024:+.1f} MiB |\n"
        f"| file bytes / streamed bytes | {job.bytes:,} / {size:,} |\n"
        f"| file equals the streamed download | {same} |\n"
        f"| lines in the file (header + one per flight for CSV) | {lines:,} |\n"
        f"| S3 multipart parts | {parts} |"
    )


if __name__ == "__main__":
    main()
