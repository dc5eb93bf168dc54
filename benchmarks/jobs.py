"""One large background export, measured: a real db_worker against the streamed download.

    python benchmarks/jobs.py                    # 1,000,000 rows, CSV, local storage and S3
    python benchmarks/jobs.py --rows 300000 --format xlsx
    python benchmarks/jobs.py --json out.json    # the numbers as JSON too

It creates its own database (``--db``, default ``streamexport_bench_jobs``, dropped at the
end; PG* variables pick the server) with the test project's tables (tests/settings.py),
inserts ``--rows`` records with ``generate_series`` (a 200-character body each), then
measures the same export of them (tests/testapp's ``RecordExport``, every field) three ways:

* **streamed**: the download view, in this process, read to its end (Django's test client);
* **job, local**: queued from the background view and run by django-tasks-db's
  ``db_worker`` (a process of its own), written to a folder;
* **job, S3**: the same, written to SeaweedFS's S3 (django-storages, 5 MiB parts).

For each job: its own time (``started_at`` to ``finished_at``), the time from queueing to
complete, the worker's peak RSS (``VmHWM`` of the worker process and its children, from
/proc, which includes Django's start-up) and its growth over the idle worker (``VmRSS``
after start-up, before the job is queued), and for S3 the number of parts (the multipart
ETag's ``-N``).  Nothing is asserted: tests/test_jobs_workers.py has the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO, REPO / "example_project"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def proc_kib(pids: list[int], field: str) -> int:
    """Return the sum of the ``/proc/<pid>/status`` ``field`` (``VmHWM``: peak resident set;
    ``VmRSS``: resident now; KiB) of ``pids`` still alive."""
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith(field + ":"))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", default="csv", choices=["csv", "ndjson", "json", "xlsx"])
    parser.add_argument("--db", default="streamexport_bench_jobs")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 job")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    media = Path(tempfile.mkdtemp(prefix="se-bench-jobs-"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.worker_settings"
    os.environ["STREAMEXPORT_SERVER_DB_NAME"] = args.db
    os.environ["STREAMEXPORT_MEDIA_ROOT"] = str(media / "media")
    # The library's default heartbeat (tests/worker_settings.py uses 0.2 s for the tests).
    os.environ["STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL"] = "2"

    from tests.servers import drop_database, pg_connect

    drop_database(args.db)
    with pg_connect() as admin:
        admin.execute(f'CREATE DATABASE "{args.db}"')
    try:
        results = run(args, media)
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(args.db)
        shutil.rmtree(media, ignore_errors=True)
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def run(args: argparse.Namespace, media: Path) -> list[dict]:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connections
    from django.test import Client
    from django.test.utils import override_settings

    from django_streamexport.jobs.models import ExportJob
    from tests.job_servers import db_worker, seaweedfs, wait_until

    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_record (title, body, status, key)"
            " SELECT 'row ' || g || ', \"q\"', repeat('x', 200), 'd', gen_random_uuid()"
            " FROM generate_series(1, %s) AS g",
            [args.rows],
        )
        cursor.execute("ANALYZE testapp_record")
    print(f"jobs: {args.rows:,} rows inserted in {time.perf_counter() - started:.1f} s")
    user = User.objects.create_user("bench", "bench@example.com", "pw", is_staff=True)
    client = Client()
    client.force_login(user)
    (media / "media").mkdir(parents=True, exist_ok=True)
    results = []

    started = time.perf_counter()
    response = client.get("/records/export/", {"format": args.format})
    size = sum(len(chunk) for chunk in response.streaming_content)
    response.close()
    seconds = time.perf_counter() - started
    results.append({"way": "streamed, in process", "seconds": seconds, "bytes": size})
    print(f"jobs: streamed {size:,} bytes in {seconds:.1f} s")

    def one_job(way: str, storage_env: dict[str, str], **overrides) -> dict:
        with override_settings(
            STREAMEXPORT_JOBS_TASK_BACKEND="db", STREAMEXPORT_JOBS_QUEUE="exports", **overrides
        ):
            with db_worker(media / f"{way}.log", media / "media", **storage_env) as worker:
                # The idle worker (Django loaded, polling an empty queue), before the job.
                time.sleep(3)
                idle = proc_kib([worker.pid, *worker.descendants()], "VmRSS")
                queued = time.perf_counter()
                answer = client.get("/records/export/background/", {"format": args.format})
                assert answer.status_code == 202, answer.content
                job_id = answer.json()["id"]

                def ended():
                    job = ExportJob.objects.get(pk=job_id)
                    return job if job.is_finished else None

                job = wait_until(ended, 3600, worker.tail)
                waited = time.perf_counter() - queued
                rss = proc_kib([worker.pid, *worker.descendants()], "VmHWM")
        assert job.status == "complete", job.to_dict()
        result = {
            "way": way,
            "seconds": (job.finished_at - job.started_at).total_seconds(),
            "queued_to_complete": waited,
            "bytes": job.bytes,
            "worker_peak_rss_mib": rss / 1024,
            "worker_idle_rss_mib": idle / 1024,
            "worker_rss_growth_mib": (rss - idle) / 1024,
            "job": job,
        }
        print(
            f"jobs: {way}: {result['seconds']:.1f} s, peak RSS {rss / 1024:.0f} MiB "
            f"({(rss - idle) / 1024:+.1f} MiB over the idle worker)"
        )
        return result

    results.append(one_job("job, local storage", {}))
    del results[-1]["job"]

    if not args.no_s3:
        with seaweedfs(media / "seaweedfs") as s3:
            alias = {
                "exports_s3": {
                    "BACKEND": "storages.backends.s3.S3Storage",
                    "OPTIONS": s3.storage_options(),
                }
            }
            from django.conf import settings

            env = {
                "STREAMEXPORT_EXTRA_STORAGES": json.dumps(alias),
                "AWS_S3_FILE_BUFFER_SIZE": str(5 * 1024 * 1024),
            }
            result = one_job(
                "job, S3 (SeaweedFS)",
                env,
                STORAGES={**settings.STORAGES, **alias},
                STREAMEXPORT_JOBS_STORAGE="exports_s3",
            )
            job = result.pop("job")
            head = s3.client().head_object(Bucket=s3.bucket, Key=job.file_name)
            result["s3_parts"] = int(head["ETag"].strip('"').rpartition("-")[2])
            results.append(result)
    return results


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"\n{args.rows:,} records, {args.format} (tests/testapp RecordExport, 16 columns)\n",
        "| way | seconds | queued to complete | MB | worker peak RSS | over idle | S3 parts |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        queued = f"{r['queued_to_complete']:.1f} s" if "queued_to_complete" in r else ""
        rss = f"{r['worker_peak_rss_mib']:.0f} MiB" if "worker_peak_rss_mib" in r else ""
        growth = f"{r['worker_rss_growth_mib']:+.1f} MiB" if "worker_rss_growth_mib" in r else ""
        lines.append(
            f"| {r['way']} | {r['seconds']:.1f} | {queued} | {r['bytes'] / 1e6:.0f} | {rss} "
            f"| {growth} "
            f"| {r.get('s3_parts', '')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
