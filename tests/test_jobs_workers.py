"""Background exports with real parts: worker processes, Redis, S3, and faults among them.

Jobs are queued the way users queue them (the background view, the admin export page) on
the database task backend (django-tasks-db, ``TASKS["db"]``) or on RQ (``TASKS["rq"]``,
Redis), and run by real ``db_worker`` / ``rqworker`` processes (tests/job_servers.py) on
the test database; files go to a folder of the test's own or to S3 (SeaweedFS, through
django-storages).  Every file is read back and compared with the database and with the
streamed download of the same export.  The faults (a SIGKILLed worker, a worker made to
stop, a cancel, the S3 server stopped, the export's PostgreSQL session terminated) each end
in a failed or cancelled job, no file (nor unfinished S3 upload, but where S3 itself is
down) left in the storage and no session of the export left in PostgreSQL.

Tests are transactional: the workers only see committed rows.  The timings of one large
job are measured by benchmarks/jobs.py, not here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from django.core.files.storage import storages
from django.db import connections
from django.test.utils import override_settings
from django_tasks_db.models import DBTaskResult

from django_streamexport.jobs.models import ExportJob
from django_streamexport.jobs.runner import sweep_stale_jobs
from tests.conftest import body, make_records, parse_csv, parse_ndjson
from tests.conftest import staff_user as staff
from tests.job_servers import (
    S3Server,
    db_worker,
    export_sessions,
    redis_connection,
    restart_weed,
    rq_worker,
    seaweedfs,
    stop_weed,
    terminate,
    wait_until,
    worker_sessions,
)
from tests.servers import insert_records
from tests.spreadsheets import read_calamine
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db(transaction=True)

BACKGROUND = "/records/export/background/"
STREAMED = "/records/export/"
ADMIN_EXPORT = "/admin/testapp/record/export/"
#: Seconds a job may take before the test gives up (a bound on a hang, not a measurement).
DEADLINE = 120
#: The database backend's queue, as the workers of :func:`db_worker` read it.
ON_DB = override_settings(STREAMEXPORT_JOBS_TASK_BACKEND="db", STREAMEXPORT_JOBS_QUEUE="exports")
#: S3 multipart part size (django-storages' AWS_S3_FILE_BUFFER_SIZE): 5 MiB, S3's minimum
#: for every part but the last.
PART_SIZE = 5 * 1024 * 1024
#: Records of the exports caught mid-way, read one row per fetch (STREAMEXPORT_CHUNK_SIZE=1
#: in the worker): tens of seconds of export, stopped after its first hundred rows.
SLOW_ROWS = 30_000
#: Records of 500 characters (about 15 MB of CSV, three parts) of the S3 exports caught
#: mid-way, five rows per fetch, after their first part.
S3_SLOW_ROWS = 25_000
#: botocore's attempts per S3 request in the workers (the default, 5 with backoff, makes a
#: stopped server take a minute to notice).
S3_ATTEMPTS = "2"


@pytest.fixture
def media_root(tmp_path):
    """The test's storage folder, for this process (MEDIA_ROOT) and its workers."""
    root = tmp_path / "media"
    root.mkdir()
    with override_settings(MEDIA_ROOT=str(root)):
        yield root


@pytest.fixture
def logs(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """SeaweedFS for the module (a test that stops it starts it again)."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_storage(s3: S3Server):
    """The ``exports_s3`` alias on SeaweedFS, as this process's job storage; its env for workers.

    The bucket is emptied afterwards (objects and unfinished multipart uploads).
    """
    alias = {"exports_s3": {"BACKEND": "storages.backends.s3.S3Storage",
                            "OPTIONS": s3.storage_options()}}  # fmt: skip
    env = {
        "STREAMEXPORT_EXTRA_STORAGES": json.dumps(alias),
        "AWS_S3_FILE_BUFFER_SIZE": str(PART_SIZE),
        "AWS_MAX_ATTEMPTS": S3_ATTEMPTS,
        "AWS_RETRY_MODE": "standard",
    }
    with override_settings(
        STORAGES={**settings.STORAGES, **alias}, STREAMEXPORT_JOBS_STORAGE="exports_s3"
    ):
        yield env
    client = s3.client()
    for key in s3.keys():
        client.delete_object(Bucket=s3.bucket, Key=key)
    for upload in client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []):
        client.abort_multipart_upload(
            Bucket=s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )


@pytest.fixture
def rq_queue():
    """The suite's RQ queue, on a Redis that must answer; its keys are deleted afterwards."""
    connection = redis_connection()
    yield settings.RQ_QUEUE
    for key in connection.scan_iter(f"rq:*:{settings.RQ_QUEUE}"):
        connection.delete(key)
    connection.srem("rq:queues", f"rq:queue:{settings.RQ_QUEUE}")


# --- helpers ------------------------------------------------------------------------------------


def db_name() -> str:
    return connections["default"].settings_dict["NAME"]


def queue(client, fmt="csv", **params) -> str:
    """Queue the background view's export; return the job's id."""
    response = client.get(BACKGROUND, {"format": fmt, **params})
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "queued"
    return response.json()["id"]


def finished(job_id, *workers, timeout: float = DEADLINE) -> ExportJob:
    """Wait until the job has ended (complete, failed, cancelled); return it."""

    def ended():
        job = ExportJob.objects.get(pk=job_id)
        return job if job.is_finished else None

    return wait_until(ended, timeout, lambda: describe(job_id, *workers))


def running(job_id, *workers, rows: int = 1, bytes: int = 0) -> ExportJob:
    """Wait until the running job has reported ``rows`` rows and ``bytes`` bytes."""

    def under_way():
        job = ExportJob.objects.get(pk=job_id)
        assert not job.is_finished, f"the job ended before the fault: {describe(job_id)}"
        return job if job.rows >= rows and job.bytes >= bytes else None

    return wait_until(under_way, DEADLINE, lambda: describe(job_id, *workers))


def describe(job_id, *workers) -> str:
    job = ExportJob.objects.filter(pk=job_id).first()
    state = job.to_dict() if job else "no job"
    return f"job {job_id}: {state}\n" + "\n".join(worker.tail() for worker in workers)


def stored(job: ExportJob) -> bytes:
    with storages[job.storage].open(job.file_name, "rb") as file:
        return file.read()


def local_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def streamed(client, fmt: str) -> bytes:
    """The streamed download of the same export, in this process."""
    response = client.get(STREAMED, {"format": fmt})
    assert response.status_code == 200
    return body(response)


def database_ids_and_titles() -> list[list[str]]:
    rows = Record.objects.order_by("id").values_list("id", "title")
    return [[str(pk), title] for pk, title in rows]


def assert_same_export(fmt: str, data: bytes, download: bytes) -> None:
    """Check ``data`` (a job's file) against the database and the streamed ``download``.

    Read back by independent readers (csv, json, calamine): the ids and titles are the
    database's, in order, and everything else equals the streamed download (bytes; an
    XLSX's cells, its zip timestamps may differ by a second).
    """
    expected = database_ids_and_titles()
    if fmt == "csv":
        rows = parse_csv(data)
        assert [row[:2] for row in rows[1:]] == expected
        assert data == download
    elif fmt == "ndjson":
        records = parse_ndjson(data)
        assert [[str(r["id"]), r["title"]] for r in records] == expected
        assert data == download
    elif fmt == "json":
        records = json.loads(data)
        assert [[str(r["id"]), r["title"]] for r in records] == expected
        assert data == download
    elif fmt == "xlsx":
        sheets = read_calamine(data)
        assert [[str(int(row[0])), row[1]] for sheet in sheets for row in sheet[1:]] == expected
        assert sheets == read_calamine(download)
    else:
        raise AssertionError(fmt)


def no_export_sessions(*workers) -> None:
    """Wait (bounded) until no worker session reads an export."""
    wait_until(
        lambda: not export_sessions(db_name()),
        30,
        lambda: (
            f"export sessions left: {export_sessions(db_name())}\n"
            + "\n".join(worker.tail() for worker in workers)
        ),
    )


def no_worker_sessions() -> None:
    """Wait (bounded) until no worker has a session: they stopped, or were killed."""
    wait_until(
        lambda: not worker_sessions(db_name()),
        30,
        lambda: f"worker sessions left: {worker_sessions(db_name())}",
    )


def wide_records(count: int, width: int) -> None:
    """Insert ``count`` records with a ``width``-character body (committed, one statement)."""
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "INSERT INTO testapp_record (title, body, status, key)"
            " SELECT 'row ' || g || ', \"q\"', repeat('x', %s), 'd', gen_random_uuid()"
            " FROM generate_series(1, %s) AS g",
            [width, count],
        )


# --- the database backend -------------------------------------------------------------------------


@ON_DB
def test_a_db_worker_runs_a_queued_job_and_its_file_is_the_database(client, media_root, logs):
    make_records("default", 500)
    client.force_login(staff())
    job_id = queue(client, "csv")
    assert ExportJob.objects.get(pk=job_id).status == "queued"  # nothing runs it here
    with db_worker(logs / "worker.log", media_root) as worker:
        job = finished(job_id, worker)
    assert (job.status, job.error_code, job.rows) == ("complete", "", 500), describe(job_id)
    task = DBTaskResult.objects.get(pk=job.task_id)
    assert task.status == "SUCCESSFUL" and task.return_value["status"] == "complete"
    status = client.get(f"/exports/jobs/{job_id}/").json()
    assert (status["status"], status["progress"], status["bytes"]) == ("complete", 1.0, job.bytes)
    download = client.get(status["download_url"])
    assert download.status_code == 200
    data = b"".join(download.streaming_content)
    assert data == stored(job) and len(data) == job.bytes
    assert_same_export("csv", data, streamed(client, "csv"))
    assert local_files(media_root) == [job.file_name]
    no_worker_sessions()  # the worker stopped, and its sessions with it


# --- RQ ---------------------------------------------------------------------------------------


def test_an_rq_worker_runs_a_queued_job(client, media_root, logs, rq_queue):
    make_records("default", 300)
    client.force_login(staff())
    with override_settings(STREAMEXPORT_JOBS_TASK_BACKEND="rq", STREAMEXPORT_JOBS_QUEUE=rq_queue):
        job_id = queue(client, "ndjson")
    rq_jobs = django_rq.get_queue(rq_queue).get_job_ids()
    assert rq_jobs == [ExportJob.objects.get(pk=job_id).task_id]  # enqueued on commit
    with rq_worker(logs / "rq.log", media_root) as worker:
        job = finished(job_id, worker)
        # The work-horse rq forked for the job has exited; the worker is still there.
        assert worker.process.poll() is None
    assert (job.status, job.rows) == ("complete", 300), describe(job_id, worker)
    assert_same_export("ndjson", stored(job), streamed(client, "ndjson"))
    assert f"Job OK ({job.task_id})" in worker.log()


# --- S3 ------------------------------------------------------------------------------------------


@ON_DB
def test_a_job_uploads_to_s3_in_parts_and_the_download_is_a_signed_url(
    client, media_root, logs, s3, s3_storage
):
    wide_records(20_000, 600)  # about 13 MB of CSV: three parts
    client.force_login(staff())
    job_id = queue(client, "csv")
    with db_worker(logs / "worker.log", media_root, **s3_storage) as worker:
        job = finished(job_id, worker)
    assert (job.status, job.rows) == ("complete", 20_000), describe(job_id, worker)
    assert s3.keys() == [job.file_name] and s3.uploads() == []
    head = s3.client().head_object(Bucket=s3.bucket, Key=job.file_name)
    parts = int(head["ETag"].strip('"').rpartition("-")[2])  # a multipart ETag ends "-<parts>"
    assert 1 < parts <= -(-job.bytes // PART_SIZE)  # parts of at least 5 MiB but the last
    assert head["ContentLength"] == job.bytes

    response = client.get(f"/exports/jobs/{job_id}/download/")
    assert response.status_code == 302
    url = response["Location"]
    assert url.startswith(f"{s3.endpoint}/{s3.bucket}/{job.file_name}?")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=300" in url
    with urllib.request.urlopen(url, timeout=60) as answer:
        data = answer.read()
        disposition = answer.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="records.csv"'
    assert_same_export("csv", data, streamed(client, "csv"))
    # The signature covers the URL: changed, S3 refuses it.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"), timeout=60)
    assert refused.value.code == 403


# --- faults -------------------------------------------------------------------------------------


@ON_DB
def test_a_sigkilled_worker_is_swept_as_worker_lost_and_its_partial_file_deleted(
    client, media_root, logs
):
    insert_records(SLOW_ROWS)
    client.force_login(staff())
    job_id = queue(client, "csv")
    # One row per fetch: the export takes long enough to be killed mid-way.
    with db_worker(logs / "worker.log", media_root, STREAMEXPORT_CHUNK_SIZE="1") as worker:
        job = running(job_id, worker, rows=100)
        assert local_files(media_root) == [job.file_name]  # the partial file
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=30)
    # PostgreSQL ends the dead worker's sessions (and rolls back the export's transaction).
    no_worker_sessions()
    job.refresh_from_db()
    assert job.status == "running"  # nobody else knows it died
    # Sweep once the last heartbeat is older than the timeout (0.2 s heartbeats; 1 s here).
    wait_until(lambda: sweep_stale_jobs(timeout=1), 30, lambda: describe(job_id, worker))
    job.refresh_from_db()
    assert (job.status, job.error_code, job.file_name) == ("failed", "worker_lost", "")
    assert local_files(media_root) == []
    assert client.get(f"/exports/jobs/{job_id}/download/").status_code == 404


@ON_DB
def test_a_worker_forced_to_stop_fails_its_job_at_once(client, media_root, logs):
    insert_records(SLOW_ROWS)
    client.force_login(staff())
    job_id = queue(client, "csv")
    with db_worker(logs / "worker.log", media_root, STREAMEXPORT_CHUNK_SIZE="1") as worker:
        running(job_id, worker, rows=100)
        # The first TERM lets the task finish; the second raises SystemExit in the task.
        worker.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "shutting down gracefully" in worker.log(), 30, worker.tail)
        assert ExportJob.objects.get(pk=job_id).status == "running"
        worker.process.send_signal(signal.SIGTERM)
        worker.process.wait(timeout=60)
    job = ExportJob.objects.get(pk=job_id)
    assert (job.status, job.error_code) == ("failed", "worker_lost"), describe(job_id, worker)
    assert job.file_name == "" and 0 < job.rows < SLOW_ROWS
    assert local_files(media_root) == []
    no_worker_sessions()
    assert sweep_stale_jobs(timeout=1) == []


@ON_DB
def test_a_sigkilled_worker_s_s3_upload_is_aborted_by_the_sweep(
    client, media_root, logs, s3, s3_storage
):
    wide_records(S3_SLOW_ROWS, 500)
    client.force_login(staff())
    job_id = queue(client, "csv")
    env = {**s3_storage, "STREAMEXPORT_CHUNK_SIZE": "5"}
    with db_worker(logs / "worker.log", media_root, **env) as worker:
        job = running(job_id, worker, bytes=PART_SIZE + 1)
        worker.process.send_signal(signal.SIGKILL)
        worker.process.wait(timeout=30)
    no_worker_sessions()
    # What the dead worker left: an unfinished multipart upload with a part in it.
    assert s3.keys() == [] and s3.uploads() == [job.file_name]
    wait_until(lambda: sweep_stale_jobs(timeout=1), 30, lambda: describe(job_id, worker))
    job.refresh_from_db()
    assert (job.status, job.error_code, job.file_name) == ("failed", "worker_lost", "")
    assert s3.keys() == [] and s3.uploads() == []


@ON_DB
def test_a_cancel_mid_export_stops_the_worker_and_deletes_the_s3_upload(
    client, media_root, logs, s3, s3_storage
):
    wide_records(S3_SLOW_ROWS, 500)
    client.force_login(staff())
    job_id = queue(client, "csv")
    env = {**s3_storage, "STREAMEXPORT_CHUNK_SIZE": "5"}
    with db_worker(logs / "worker.log", media_root, **env) as worker:
        running(job_id, worker, bytes=PART_SIZE + 1)  # a part is uploaded
        response = client.post(f"/exports/jobs/{job_id}/cancel/")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        task_id = ExportJob.objects.get(pk=job_id).task_id
        task = wait_until(
            lambda: DBTaskResult.objects.filter(pk=task_id, status="SUCCESSFUL").first(),
            DEADLINE,
            lambda: describe(job_id, worker),
        )
        assert task.return_value["status"] == "cancelled"
        no_export_sessions(worker)
    job = ExportJob.objects.get(pk=job_id)
    assert (job.status, job.file_name, job.error_code) == ("cancelled", "", "")
    assert job.rows < S3_SLOW_ROWS
    assert s3.keys() == [] and s3.uploads() == []
    assert client.post(f"/exports/jobs/{job_id}/cancel/").status_code == 409


@ON_DB
def test_s3_stopped_mid_export_fails_the_job_with_storage_error(
    client, media_root, logs, s3, s3_storage
):
    wide_records(S3_SLOW_ROWS, 500)
    client.force_login(staff())
    job_id = queue(client, "csv")
    env = {**s3_storage, "STREAMEXPORT_CHUNK_SIZE": "5"}
    with db_worker(logs / "worker.log", media_root, **env) as worker:
        running(job_id, worker, bytes=PART_SIZE + 1)
        stop_weed(s3)
        try:
            job = finished(job_id, worker)
            no_export_sessions(worker)
        finally:
            restart_weed(s3)
    assert (job.status, job.error_code) == ("failed", "storage_error"), describe(job_id, worker)
    assert job.file_name == ""
    assert job.error_message == "The file could not be written to the storage."
    assert s3.keys() == []  # never completed: no object
    assert f"Export job {job_id}: writing 'exports/{job_id}/records.csv' failed." in worker.log()


@ON_DB
def test_the_export_session_terminated_fails_the_job_and_the_worker_goes_on(
    client, media_root, logs
):
    insert_records(SLOW_ROWS)
    client.force_login(staff())
    job_id = queue(client, "csv")
    with db_worker(logs / "worker.log", media_root, STREAMEXPORT_CHUNK_SIZE="1") as worker:
        running(job_id, worker, rows=100)
        sessions = wait_until(
            lambda: export_sessions(db_name()), 30, lambda: str(worker_sessions(db_name()))
        )
        assert len(sessions) == 1, sessions
        terminate(sessions[0]["pid"])
        job = finished(job_id, worker)
        assert (job.status, job.error_code, job.file_name) == (
            "failed", "database_unavailable", ""
        ), describe(job_id, worker)  # fmt: skip
        assert local_files(media_root) == []
        no_export_sessions(worker)
        # The same worker runs the next job on a new connection.
        hundredth = Record.objects.all()[99].pk
        with connections["default"].cursor() as cursor:
            cursor.execute("DELETE FROM testapp_record WHERE id > %s", [hundredth])
        next_job = finished(queue(client, "csv"), worker)
    assert (next_job.status, next_job.rows) == ("complete", 100), describe(next_job.pk, worker)


# --- scale -------------------------------------------------------------------------------------


@ON_DB
def test_two_workers_run_twenty_jobs_of_every_format(client, media_root, logs):
    make_records("default", 1000)
    client.force_login(staff())
    formats = ["csv", "ndjson", "xlsx", "json"] * 5
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(
                db_worker(logs / f"worker-{n}.log", media_root, worker_id=f"worker-{n}")
            )
            for n in (1, 2)
        ]
        job_ids = [queue(client, fmt) for fmt in formats]
        jobs = [finished(job_id, *workers) for job_id in job_ids]
    assert [(job.status, job.rows) for job in jobs] == [("complete", 1000)] * 20
    downloads = {fmt: streamed(client, fmt) for fmt in set(formats)}
    for job, fmt in zip(jobs, formats, strict=True):
        assert job.format == fmt
        assert_same_export(fmt, stored(job), downloads[fmt])
    assert len(local_files(media_root)) == 20
    # Both workers ran jobs, and jobs on the two ran at the same time.
    by_worker: dict[str, list[ExportJob]] = {}
    for job in jobs:
        (worker_id,) = DBTaskResult.objects.get(pk=job.task_id).worker_ids
        by_worker.setdefault(worker_id, []).append(job)
    assert len(by_worker) == 2, {key: len(value) for key, value in by_worker.items()}
    first, second = by_worker.values()
    assert any(
        a.started_at < b.finished_at and b.started_at < a.finished_at for a in first for b in second
    )


# --- permissions when the job runs ---------------------------------------------------------------


@ON_DB
def test_a_user_who_lost_the_permission_before_the_job_ran_gets_a_failed_job(
    client, media_root, logs
):
    make_records("default", 20)
    user = staff("clerk", "view_record")
    client.force_login(user)
    response = client.post(
        ADMIN_EXPORT,
        {"_changelist_filters": "", "format": "csv", "fields": ["", "id", "title"],
         "_background": "1"},
    )  # fmt: skip
    assert response.status_code == 302
    job = ExportJob.objects.get()
    assert (job.status, job.source_kind) == ("queued", "admin")
    user.user_permissions.clear()
    with db_worker(logs / "worker.log", media_root) as worker:
        job = finished(job.pk, worker)
    assert (job.status, job.error_code, job.rows) == ("failed", "permission_denied", 0)
    assert job.error_message == "You may no longer run this export."
    assert local_files(media_root) == []
    no_worker_sessions()
