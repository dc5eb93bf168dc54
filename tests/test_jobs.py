"""Background exports (django_streamexport.jobs) in process: queueing, running, outcomes.

The task runs on Django's immediate backend (inside ``enqueue()``) or, where a test must
act between queueing and running, is queued on the database backend (``TASKS["db"]``,
django-tasks-db) and run here with :func:`run_job`, as a worker would.  The tests with
real worker processes are in tests/test_jobs_workers.py.  Files are read back from the
storage and compared with the streamed download of the same export.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import pytest
from django.core.files.storage import storages
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from django_streamexport.jobs.models import ExportJob
from django_streamexport.jobs.runner import (
    cancel_job,
    prune_expired_jobs,
    run_job,
    sweep_stale_jobs,
)
from django_streamexport.jobs.signals import export_job_finished
from tests.conftest import body, make_records, parse_csv
from tests.conftest import staff_user as staff

pytestmark = pytest.mark.django_db(transaction=True)

BACKGROUND = "/records/export/background/"
STREAMED = "/records/export/"
ADMIN_EXPORT = "/admin/testapp/record/export/"
#: Queue on the database backend and let the test run the job (no worker).
QUEUE_ONLY = override_settings(
    STREAMEXPORT_JOBS_TASK_BACKEND="db", STREAMEXPORT_JOBS_QUEUE="exports"
)


@pytest.fixture(autouse=True)
def media_root(tmp_path):
    """Each test's own storage folder (FileSystemStorage follows MEDIA_ROOT)."""
    with override_settings(MEDIA_ROOT=str(tmp_path / "media")):
        yield


@contextlib.contextmanager
def patch_attribute(path, value):
    """Set the class attribute at dotted ``path`` to ``value`` for the block."""
    from django.utils.module_loading import import_string

    owner_path, name = path.rsplit(".", 1)
    owner = import_string(owner_path)
    old = owner.__dict__.get(name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def stored_bytes(job: ExportJob) -> bytes:
    with storages[job.storage].open(job.file_name, "rb") as file:
        return file.read()


def stored_files() -> list[str]:
    root = storages["default"].location
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _dirs, names in os.walk(root)
        for name in names
    )


# --- views: 202, status, download ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "ndjson", "xlsx"])
def test_view_queues_a_job_whose_file_equals_the_streamed_download(client, fmt):
    make_records("default", 300)
    client.force_login(staff())
    response = client.get(BACKGROUND, {"format": fmt})
    assert response.status_code == 202
    status = response.json()
    assert response["Location"] == status["url"]
    assert status["status"] == "complete"  # the immediate backend ran it inside the request
    job = ExportJob.objects.get(pk=status["id"])
    assert (job.rows, job.format, job.source_kind) == (300, fmt, "view")
    assert job.query_string == f"format={fmt}"

    polled = client.get(response["Location"]).json()
    assert polled["progress"] == 1.0 and polled["rows"] == 300
    download = client.get(polled["download_url"])
    assert download.status_code == 200
    assert download["Content-Disposition"] == f'attachment; filename="records.{fmt}"'
    streamed = body(client.get(STREAMED, {"format": fmt}))
    downloaded = b"".join(download.streaming_content)
    if fmt == "xlsx":  # the same cells; the zip's timestamps may differ by a second
        from tests.spreadsheets import read_calamine

        assert read_calamine(downloaded) == read_calamine(streamed)
    else:
        assert downloaded == streamed == stored_bytes(job)
    assert job.bytes == len(downloaded)


def test_other_users_get_404_and_anonymous_users_are_sent_to_log_in(client):
    make_records("default", 5)
    client.force_login(staff("owner"))
    job_url = client.get(BACKGROUND).json()["url"]
    job = ExportJob.objects.get()
    client.logout()
    for url, method in [
        (job_url, "get"),
        (job_url + "download/", "get"),
        (job_url + "cancel/", "post"),
    ]:
        response = getattr(client, method)(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    client.force_login(staff("intruder"))
    for url, method in [
        (job_url, "get"),
        (job_url + "download/", "get"),
        (job_url + "cancel/", "post"),
    ]:
        assert getattr(client, method)(url).status_code == 404
    client.force_login(staff("root", superuser=True))
    assert client.get(job_url + "download/").status_code == 200
    assert ExportJob.objects.get().status == job.status == "complete"


def test_anonymous_background_request_is_sent_to_log_in(client):
    response = client.get(BACKGROUND)
    assert response.status_code == 302
    assert not ExportJob.objects.exists()


def test_a_bad_request_is_refused_before_queueing(client):
    client.force_login(staff())
    response = client.get(BACKGROUND, {"format": "nope"})
    assert response.status_code == 400
    assert not ExportJob.objects.exists()


def test_head_never_queues(client):
    client.force_login(staff())
    assert client.head(BACKGROUND).status_code == 200
    assert not ExportJob.objects.exists()


def test_auto_queues_above_the_planner_estimate_and_streams_below(client):
    make_records("default", 300)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE testapp_record")
    client.force_login(staff())
    view = "tests.testapp.views.BackgroundRecordExport.background"
    with patch_attribute(view, "auto"):
        with override_settings(STREAMEXPORT_BACKGROUND_ROWS=100):
            queued = client.get(BACKGROUND)
        with override_settings(STREAMEXPORT_BACKGROUND_ROWS=10_000):
            streamed = client.get(BACKGROUND)
    assert queued.status_code == 202
    assert ExportJob.objects.get().rows_estimate == 300
    assert streamed.status_code == 200 and streamed.streaming
    assert len(parse_csv(body(streamed))) == 301


@override_settings(STREAMEXPORT_JOBS_X_ACCEL_REDIRECT="/protected-exports/")
def test_x_accel_redirect_hands_the_file_to_nginx(client):
    make_records("default", 3)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    response = client.get(f"/exports/jobs/{job.pk}/download/")
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == f"/protected-exports/exports/{job.pk}/records.csv"
    assert response["Content-Disposition"] == 'attachment; filename="records.csv"'
    assert response["Content-Type"] == "text/csv; charset=utf-8"


@override_settings(
    # The test environment already sends mail to mail.outbox (EMAIL_BACKEND is deprecated
    # on Django 6.1, MAILERS replaces it).
    STREAMEXPORT_JOBS_EMAIL=True
)
def test_the_email_links_the_job_page_never_the_file(client):
    from django.core import mail

    make_records("default", 3)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    (message,) = mail.outbox
    assert message.to == ["staff@example.com"]
    assert f"http://testserver/exports/jobs/{job.pk}/" in message.body
    assert "download" not in message.body


# --- outcomes recorded on the job --------------------------------------------------------------


@QUEUE_ONLY
def test_a_job_queued_then_cancelled_never_runs(client):
    make_records("default", 5)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    assert job.status == "queued" and job.task_id
    assert client.post(f"/exports/jobs/{job.pk}/cancel/").status_code == 200
    assert run_job(job.pk)["status"] == "cancelled"
    job.refresh_from_db()
    assert (job.status, job.rows, job.file_name) == ("cancelled", 0, "")
    assert client.post(f"/exports/jobs/{job.pk}/cancel/").status_code == 409
    assert stored_files() == []


@QUEUE_ONLY
def test_permission_lost_between_queueing_and_running_fails_the_job(client):
    make_records("default", 5)
    user = staff("clerk", "view_record")
    client.force_login(user)
    response = client.post(
        ADMIN_EXPORT,
        {"_changelist_filters": "", "format": "csv", "fields": ["", "id", "title"],
         "_background": "1"},
    )  # fmt: skip
    assert response.status_code == 302
    job = ExportJob.objects.get()
    assert (job.source_kind, job.fields) == ("admin", ["id", "title"])
    user.user_permissions.clear()
    assert run_job(job.pk)["status"] == "failed"
    job.refresh_from_db()
    assert job.error_code == "permission_denied" and job.file_name == ""
    assert stored_files() == []


@QUEUE_ONLY
@override_settings(STREAMEXPORT_MAX_ROWS=10)
def test_a_failure_mid_export_fails_the_job_and_leaves_no_file(client):
    make_records("default", 50)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    assert run_job(job.pk)["status"] == "failed"
    job.refresh_from_db()
    assert job.error_code == "row_limit"
    assert "limit of 10" in job.error_message
    assert stored_files() == []
    assert client.get(f"/exports/jobs/{job.pk}/download/").status_code == 404


@QUEUE_ONLY
def test_a_full_storage_fails_the_job_with_storage_full(client, tmp_path):
    make_records("default", 2000)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    # The job's file is a link to /dev/full: every write fails with ENOSPC.
    folder = os.path.join(storages["default"].location, "exports", str(job.pk))
    os.makedirs(folder)
    os.symlink("/dev/full", os.path.join(folder, "records.csv"))
    assert run_job(job.pk)["status"] == "failed"
    job.refresh_from_db()
    assert job.error_code == "storage_full"
    assert stored_files() == []


@QUEUE_ONLY
def test_the_admin_export_page_queues_what_the_changelist_shows(client):
    records = make_records("default", 40)
    client.force_login(staff("clerk", "view_record"))
    page = client.get(
        ADMIN_EXPORT,
        {"_changelist_filters": "status__exact=p", "format": "csv", "fields": ["", "id", "title"],
         "_background": "1"},
    )  # fmt: skip
    assert page.status_code == 200 and b'method="post"' in page.content
    assert not ExportJob.objects.exists()  # a GET only asks to confirm
    response = client.post(
        ADMIN_EXPORT,
        {"_changelist_filters": "status__exact=p", "format": "csv", "fields": ["", "id", "title"],
         "_background": "1"},
    )  # fmt: skip
    job = ExportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"].endswith(f"/admin/streamexport_jobs/exportjob/{job.pk}/change/")
    assert run_job(job.pk)["status"] == "complete"
    job.refresh_from_db()
    rows = parse_csv(stored_bytes(job))
    expected = [[str(r.id), r.title] for r in records if r.status == "p"]
    assert rows[1:] == expected and job.rows == len(expected)
    # The jobs admin lists it with a download link that sends the same bytes.
    changelist = client.get("/admin/streamexport_jobs/exportjob/")
    assert changelist.status_code == 200 and b"<progress" in changelist.content
    download = client.get(f"/admin/streamexport_jobs/exportjob/{job.pk}/download/")
    assert b"".join(download.streaming_content) == stored_bytes(job)
    page = client.get(f"/admin/streamexport_jobs/exportjob/{job.pk}/change/")
    assert b"/download/" in page.content and b'http-equiv="refresh"' not in page.content


@QUEUE_ONLY
def test_the_job_page_refreshes_while_queued_and_cancels(client):
    make_records("default", 3)
    client.force_login(staff("clerk", "view_record"))
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    page = client.get(f"/admin/streamexport_jobs/exportjob/{job.pk}/change/")
    assert b'http-equiv="refresh"' in page.content and b"Cancel this export" in page.content
    cancel = f"/admin/streamexport_jobs/exportjob/{job.pk}/cancel/"
    assert client.get(cancel).status_code == 405
    assert client.post(cancel).status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"
    client.force_login(staff("other", "view_record"))
    assert client.post(cancel).status_code == 404


def test_admin_refuses_bad_background_posts_with_the_page_and_400(client):
    client.force_login(staff("clerk", "view_record"))
    response = client.post(
        ADMIN_EXPORT, {"format": "csv", "fields": ["", "body"], "_background": "1"}
    )
    assert response.status_code == 400
    assert not ExportJob.objects.exists()
    assert client.post(ADMIN_EXPORT, {"format": "csv"}).status_code == 405


def test_jobs_admin_shows_each_user_their_own_jobs(client):
    make_records("default", 3)
    for name in ("alice", "bob"):
        client.force_login(staff(name, "view_record"))
        client.get(BACKGROUND)
    alice_job = ExportJob.objects.get(user__username="alice")
    bob_job = ExportJob.objects.get(user__username="bob")
    changelist = client.get("/admin/streamexport_jobs/exportjob/")  # bob
    assert str(bob_job.pk) in changelist.content.decode()
    assert str(alice_job.pk) not in changelist.content.decode()
    change = f"/admin/streamexport_jobs/exportjob/{alice_job.pk}/change/"
    assert client.get(change).status_code == 302  # not found: back to the admin index
    download = f"/admin/streamexport_jobs/exportjob/{alice_job.pk}/download/"
    assert client.get(download).status_code == 404


# --- housekeeping ------------------------------------------------------------------------------


@QUEUE_ONLY
def test_sweep_fails_a_job_whose_worker_stopped_beating_and_deletes_its_file(client):
    make_records("default", 5)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    # What a SIGKILLed worker leaves: running, a partial file, an old heartbeat.
    name = f"exports/{job.pk}/records.csv"
    storages["default"].save(name, __import__("io").BytesIO(b"id,title\r\n1,"))
    stale = timezone.now() - timedelta(seconds=600)
    ExportJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=stale, file_name=name)
    finished = []
    export_job_finished.connect(lambda job, **kw: finished.append(job.status), weak=False)
    try:
        assert [swept.pk for swept in sweep_stale_jobs(timeout=60)] == [job.pk]
    finally:
        export_job_finished.receivers.clear()
    job.refresh_from_db()
    assert (job.status, job.error_code) == ("failed", "worker_lost")
    assert finished == ["failed"]
    assert stored_files() == []
    assert sweep_stale_jobs(timeout=60) == []


def test_prune_expires_old_files_and_the_command_reports_it(client, capsys):
    make_records("default", 5)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    assert stored_files() == [job.file_name]
    assert prune_expired_jobs() == (0, 0)
    ExportJob.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    call_command("streamexport_jobs", "prune")
    assert "Expired 1 file(s)" in capsys.readouterr().out
    job.refresh_from_db()
    assert job.status == "expired" and stored_files() == []
    assert client.get(f"/exports/jobs/{job.pk}/download/").status_code == 404
    call_command("streamexport_jobs", "prune", "--delete-after", "0.001")
    assert not ExportJob.objects.exists()
    with pytest.raises(CommandError, match="not a positive number"):
        call_command("streamexport_jobs", "prune", "--delete-after", "-1")


def test_cancel_job_of_a_finished_job_is_false(client):
    make_records("default", 2)
    client.force_login(staff())
    job = ExportJob.objects.get(pk=client.get(BACKGROUND).json()["id"])
    assert not cancel_job(job)
    assert job.status == "complete"


# --- the command ----------------------------------------------------------------------------------


@QUEUE_ONLY
def test_command_background_prints_the_job_id_and_the_job_exports_the_filtered_rows(capsys):
    records = make_records("default", 30)
    staff("operator")
    call_command(
        "streamexport", "testapp.Record", "--fields", "id,title", "--filter", "status=d",
        "--background", "--user", "operator",
    )  # fmt: skip
    job = ExportJob.objects.get(pk=capsys.readouterr().out.strip())
    assert (job.source_kind, job.user.username) == ("command", "operator")
    assert run_job(job.pk)["status"] == "complete"
    job.refresh_from_db()
    expected = [[str(r.id), r.title] for r in records if r.status == "d"]
    assert parse_csv(stored_bytes(job))[1:] == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--background"], "needs --user"),
        (["--background", "--user", "nobody"], "No user 'nobody'"),
        (["--user", "operator"], "--user goes with --background"),
        (["--background", "--user", "operator", "-o", "x.csv"], "not to --output"),
    ],
)
def test_command_background_refuses_bad_arguments(arguments, message):
    staff("operator")
    with pytest.raises(CommandError, match=message):
        call_command("streamexport", "testapp.Record", "--fields", "id", *arguments)
    assert not ExportJob.objects.exists()


# --- checks ------------------------------------------------------------------------------------

#: Per setting: its check id, values it refuses, values at the edges that pass.
JOB_SETTINGS = {
    "BACKGROUND_ROWS": ("J001", [-1, 1.5, "100", True, None], [0, 10**9]),
    "JOBS_STORAGE": ("J002", ["nope", "", None, 0], ["default", "staticfiles"]),
    "JOBS_PATH": ("J003", ["", "/abs", "a/../b", "..", "a\\b", None], ["exports", "a/b/c"]),
    "JOBS_TASK_BACKEND": ("J004", ["nope", "", None], ["default"]),
    "JOBS_QUEUE": ("J005", ["", None, 3, "not-a-queue-of-the-backend"], ["default"]),
    "JOBS_EXPIRE_AFTER": ("J006", [0, -1, "60", True, float("inf"), float("nan")], [0.5, 86400]),
    "JOBS_HEARTBEAT_INTERVAL": ("J007", [0, -1, "2", None, float("nan")], [0.01, 60]),
    "JOBS_HEARTBEAT_TIMEOUT": ("J008", [0, 2, 1, "120", float("inf")], [2.5, 3600]),
    "JOBS_URL_EXPIRE": ("J009", [0, -1, 1.5, "300", True], [1, 604800]),
    "JOBS_X_ACCEL_REDIRECT": ("J010", ["protected/", "", 1, True], [None, "/protected/"]),
    "JOBS_EMAIL": ("J011", [1, "yes", None], [True, False]),
}


def test_every_job_setting_has_a_check():
    from django_streamexport.jobs.checks import RULES
    from django_streamexport.jobs.conf import JobsSettings

    names = {name for name, value in vars(JobsSettings).items() if isinstance(value, property)}
    assert set(RULES) == set(JOB_SETTINGS) == names


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, (_id, bad, _good) in JOB_SETTINGS.items() for value in bad],
)
def test_job_settings_refused(name, value):
    from django_streamexport.jobs.checks import check_jobs_settings

    assert check_jobs_settings() == []
    with override_settings(**{f"STREAMEXPORT_{name}": value}):
        (error,) = check_jobs_settings()
    assert error.id == f"django_streamexport.{JOB_SETTINGS[name][0]}"
    assert error.msg.startswith(f"STREAMEXPORT_{name} is {value!r}; it must be ")
    assert error.hint


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, (_id, _bad, good) in JOB_SETTINGS.items() for value in good],
)
def test_job_settings_that_pass(name, value):
    from django_streamexport.jobs.checks import check_jobs_settings

    with override_settings(**{f"STREAMEXPORT_{name}": value}):
        assert check_jobs_settings() == []


def test_a_queue_the_backend_does_not_have_is_refused():
    from django_streamexport.jobs.checks import check_jobs_settings

    with override_settings(STREAMEXPORT_JOBS_TASK_BACKEND="db", STREAMEXPORT_JOBS_QUEUE="x"):
        assert [error.id for error in check_jobs_settings()] == ["django_streamexport.J005"]
    with override_settings(STREAMEXPORT_JOBS_TASK_BACKEND="db", STREAMEXPORT_JOBS_QUEUE="exports"):
        assert check_jobs_settings() == []
