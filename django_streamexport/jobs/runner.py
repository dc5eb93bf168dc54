"""Queue, run, cancel, sweep and prune background exports.

:func:`queue_export_job` records a job and enqueues
:func:`~django_streamexport.jobs.tasks.run_export_job` once the transaction commits;
the task calls :func:`run_job`, which rebuilds the export (:mod:`.sources`), streams it
into storage through :func:`~django_streamexport.sinks.write_to_file` and records the
outcome.  A heartbeat thread writes ``rows``, ``bytes`` and ``heartbeat_at`` every
``STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL`` seconds on its own connection (the export's
connection is inside the export's transaction, where nothing would be visible) and
notices a cancel.  :func:`sweep_stale_jobs` fails running jobs whose worker stopped
beating (a SIGKILLed worker: task backends such as django-tasks-db leave such a task
running forever) and :func:`prune_expired_jobs` deletes expired files.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.core.files.storage import Storage, storages
from django.core.management.base import CommandError
from django.db import connections, transaction
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from django_streamexport.exceptions import ExportRequestError
from django_streamexport.failures import EXPORT_ERROR, MESSAGES, describe_failure
from django_streamexport.jobs.conf import jobs_conf as conf
from django_streamexport.jobs.models import ExportJob
from django_streamexport.jobs.signals import export_job_finished
from django_streamexport.jobs.sources import build_job_export
from django_streamexport.sinks import write_to_file

__all__ = [
    "JobCancelled",
    "cancel_job",
    "prune_expired_jobs",
    "queue_export_job",
    "run_job",
    "sweep_stale_jobs",
]

logger = logging.getLogger("django_streamexport")

Status = ExportJob.Status

#: Failure codes of jobs, beside the streamed exports' (:mod:`django_streamexport.failures`).
PERMISSION_DENIED = "permission_denied"
BAD_REQUEST = "bad_request"
STORAGE_FULL = "storage_full"
STORAGE_ERROR = "storage_error"
WORKER_LOST = "worker_lost"
JOB_MESSAGES = {
    PERMISSION_DENIED: gettext_lazy("You may no longer run this export."),
    STORAGE_FULL: gettext_lazy("The storage is full; the file could not be written."),
    STORAGE_ERROR: gettext_lazy("The file could not be written to the storage."),
    WORKER_LOST: gettext_lazy("The worker running the export stopped."),
}


class JobCancelled(Exception):
    """Raised between chunks when the job was cancelled (or deleted) while it ran."""


def queue_export_job(
    *,
    user: Any,
    source: dict[str, Any],
    format: str,
    fields: Sequence[str] | None = None,
    filename: str = "",
    rows_estimate: int | None = None,
    request: HttpRequest | None = None,
    page_url: Callable[[uuid.UUID], str] | None = None,
) -> ExportJob:
    """Record a queued job and enqueue its task when the current transaction commits.

    ``source`` is :func:`~.sources.describe_view`'s or :func:`~.sources.describe_admin`'s.
    Enqueueing waits for the commit (``transaction.on_commit``): a worker must find the
    job's row, and a backend such as RQ enqueues at once, outside the transaction.
    Given the ``request``, the job's ``page_url`` is its status resource's absolute URL
    (``django_streamexport.jobs.urls`` must be included: ``ImproperlyConfigured``
    otherwise), unless ``page_url(job_id)`` returns the job's page (the admin's).
    Returns the job as it is after enqueueing (an immediate backend has run it already).
    """
    job_id = uuid.uuid4()
    url = page_url(job_id) if page_url is not None else ""
    if request is not None and page_url is None:
        try:
            url = request.build_absolute_uri(reverse("streamexport_jobs:status", args=[job_id]))
        except NoReverseMatch:
            raise ImproperlyConfigured(
                "Background exports need the job URLs: include "
                "'django_streamexport.jobs.urls' in the project's URLconf."
            ) from None
    job = ExportJob.objects.create(
        id=job_id,
        user=user,
        format=format,
        fields=list(fields) if fields is not None else None,
        filename=filename,
        rows_estimate=rows_estimate,
        page_url=url,
        storage=conf.JOBS_STORAGE,
        **source,
    )
    transaction.on_commit(lambda: _enqueue(job))
    job.refresh_from_db()
    return job


def _enqueue(job: ExportJob) -> None:
    from django_streamexport.jobs.tasks import run_export_job

    task = run_export_job.using(backend=conf.JOBS_TASK_BACKEND, queue_name=conf.JOBS_QUEUE)
    result = task.enqueue(str(job.pk))
    # The immediate backend has run the job inside enqueue(); keep what it recorded.
    ExportJob.objects.filter(pk=job.pk).update(task_id=str(result.id)[:64])


def cancel_job(job: ExportJob) -> bool:
    """Cancel ``job`` if it is queued or running; return whether it was.

    A queued job never starts; a running one stops at its next chunk (within about
    ``STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL`` seconds) and its partial file is deleted.
    """
    now = timezone.now()
    cancelled = ExportJob.objects.filter(
        pk=job.pk, status__in=(Status.QUEUED, Status.RUNNING)
    ).update(status=Status.CANCELLED, finished_at=now)
    job.refresh_from_db()
    return bool(cancelled)


class Heartbeat(threading.Thread):
    """Write a running job's progress every ``interval`` seconds; notice a cancel.

    Runs on its own thread, so on its own database connection (closed when it stops).
    ``rows`` and ``bytes`` are set by the writer; ``cancelled`` is set once the job's
    row is no longer ``running`` (cancelled, swept or deleted).
    """

    def __init__(self, job_id: Any, interval: float) -> None:
        super().__init__(name=f"streamexport-heartbeat-{job_id}", daemon=True)
        self.job_id, self.interval = job_id, interval
        self.rows = self.bytes = 0
        self.cancelled = threading.Event()
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                self.beat()
        finally:
            connections.close_all()  # this thread's connections only

    def beat(self) -> None:
        try:
            updated = ExportJob.objects.filter(pk=self.job_id, status=Status.RUNNING).update(
                rows=self.rows, bytes=self.bytes, heartbeat_at=timezone.now()
            )
        except Exception:  # the database is away: the export will say so itself
            logger.warning("Export job %s: the heartbeat failed.", self.job_id, exc_info=True)
            connections.close_all()
            return
        if not updated:
            self.cancelled.set()

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join()


def _storage_name(job: ExportJob, filename: str) -> str:
    return posixpath.join(conf.JOBS_PATH, str(job.pk), filename)


def _open_for_writing(storage: Storage, name: str) -> Any:
    """Open ``name`` for binary writing; a local storage's folder is created first.

    ``FileSystemStorage.open(name, "wb")`` writes the final path directly and needs the
    folder to exist (only ``save()`` creates folders); django-storages' S3 file uploads a
    multipart part every ``AWS_S3_FILE_BUFFER_SIZE`` bytes (5 MiB by default).
    """
    try:
        path = storage.path(name)
    except NotImplementedError:  # not a local storage
        pass
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return storage.open(name, "wb")


def _delete_quietly(storage: Storage, name: str) -> None:
    try:
        storage.delete(name)
    except Exception:
        logger.warning("Could not delete the partial export file %r.", name, exc_info=True)


def _close_broken_connections() -> None:
    # After a terminated backend or a lost server the export's connection is unusable;
    # Django reconnects on the next query once it is closed.
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()


def _storage_failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return STORAGE_FULL, str(JOB_MESSAGES[STORAGE_FULL])
    return STORAGE_ERROR, str(JOB_MESSAGES[STORAGE_ERROR])


def run_job(job_id: Any) -> dict[str, Any]:
    """Run the queued job ``job_id`` to its end; return ``{"status", "rows", "bytes"}``.

    Claims the job (``queued`` to ``running``; a job already claimed, cancelled or
    deleted is left alone), rebuilds its export as its user, and writes it into the
    ``STREAMEXPORT_JOBS_STORAGE`` storage under ``<STREAMEXPORT_JOBS_PATH>/<job id>/
    <download name>``.  Every outcome is recorded on the job: ``complete`` (with
    ``expires_at``), ``cancelled``, or ``failed`` with a code: the streamed exports'
    codes (:mod:`django_streamexport.failures`), ``permission_denied``, ``bad_request``,
    ``storage_full``, ``storage_error``, ``worker_lost`` (the worker was made to stop
    mid-export: ``SystemExit`` or ``KeyboardInterrupt``, recorded and re-raised).  A
    failed or cancelled job's partial file is deleted (on S3, its multipart upload
    aborted).  Never raises for the export's own failures (the task succeeds: the job
    records them).
    """
    now = timezone.now()
    claimed = ExportJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now, heartbeat_at=now
    )
    job = ExportJob.objects.filter(pk=job_id).select_related("user").first()
    if job is None or not claimed:
        status = job.status if job is not None else "missing"
        logger.info("Export job %s not run: it is %s.", job_id, status)
        return {"status": status, "rows": 0, "bytes": 0}
    try:
        export = build_job_export(
            user=job.user,
            source_kind=job.source_kind,
            source=job.source,
            query_string=job.query_string,
            url_kwargs=job.url_kwargs,
            format=job.format,
            fields=job.fields,
        )
        stream = export.stream()
    except PermissionDenied:
        return _finish(job, Status.FAILED, PERMISSION_DENIED, str(JOB_MESSAGES[PERMISSION_DENIED]))
    except (ExportRequestError, CommandError) as exc:
        return _finish(job, Status.FAILED, BAD_REQUEST, str(exc))
    except Exception as exc:
        logger.exception("Export job %s could not start.", job.pk)
        return _finish(job, Status.FAILED, EXPORT_ERROR, str(MESSAGES[EXPORT_ERROR]), exc=exc)

    storage = storages[job.storage or conf.JOBS_STORAGE]
    name = _storage_name(job, stream.plan.filename)
    described = {
        "file_name": name,
        "filename": stream.plan.filename,
        "content_type": stream.format.content_type,
    }
    ExportJob.objects.filter(pk=job.pk).update(**described)
    for attribute, value in described.items():
        setattr(job, attribute, value)
    heartbeat = Heartbeat(job.pk, conf.JOBS_HEARTBEAT_INTERVAL)

    def progress(current: Any) -> None:
        heartbeat.rows, heartbeat.bytes = current.rows, current.bytes
        if heartbeat.cancelled.is_set():
            raise JobCancelled

    heartbeat.start()
    file = None
    try:
        file = _open_for_writing(storage, name)
        write_to_file(stream, file, progress=progress)
        file.close()
    except JobCancelled:
        _abandon(storage, name, file)
        return _finish(job, Status.CANCELLED, "", "")
    except Exception as exc:
        _abandon(storage, name, file)
        _close_broken_connections()
        if stream.outcome == "failed":  # the export failed: its code, as a download's
            failure = describe_failure(exc)
            return _finish(job, Status.FAILED, failure.code, failure.message, exc=exc)
        logger.error("Export job %s: writing %r failed.", job.pk, name, exc_info=True)
        return _finish(job, Status.FAILED, *_storage_failure(exc), exc=exc)
    except BaseException:
        # The worker is being stopped mid-export (SystemExit from a worker's second
        # SIGTERM, KeyboardInterrupt): fail the job now, not at the sweep, then stop.
        _abandon(storage, name, file)
        _stop_recorded(job)
        raise
    finally:
        heartbeat.stop()
    job.rows, job.bytes = stream.rows, stream.bytes
    return _finish(job, Status.COMPLETE, "", "", storage=storage)


def _stop_recorded(job: ExportJob) -> None:
    try:
        # The interruption may have come mid-statement: new connections (outside a
        # transaction of the caller's; a worker reconnects for its next task).
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close()
        _finish(job, Status.FAILED, WORKER_LOST, str(JOB_MESSAGES[WORKER_LOST]))
    except Exception:
        logger.warning("Export job %s: recording its worker's stop failed.", job.pk,
                       exc_info=True)  # fmt: skip


def _abandon(storage: Storage, name: str, file: Any) -> None:
    """Drop the partial file ``name``: closed and deleted; on S3 its upload aborted.

    Closing an S3 file would complete its multipart upload (the last buffer uploaded, a
    partial object created only to be deleted); aborting it stores nothing.
    """
    if file is not None:
        if _abort_uploads(storage, name):
            _discard(file)
        else:
            try:
                file.close()
            except Exception:
                logger.warning("Closing the partial export file %r failed.", name, exc_info=True)
    _delete_quietly(storage, name)


def _abort_uploads(storage: Storage, name: str) -> bool:
    """Abort the unfinished multipart uploads of ``name``; return whether ``storage`` is S3.

    django-storages' ``S3Storage`` writes a file as an S3 multipart upload, completed when
    the file is closed; the parts of an upload neither completed nor aborted stay stored
    (and billed) and are listed nowhere but ``ListMultipartUploads``.  Any other storage
    (one without ``bucket.multipart_uploads``, boto3's collection) has none: ``False``.
    When S3 cannot be reached the upload stays (a bucket lifecycle rule,
    ``AbortIncompleteMultipartUpload``, removes it later).
    """
    uploads = getattr(getattr(storage, "bucket", None), "multipart_uploads", None)
    if uploads is None:
        return False
    location = getattr(storage, "location", "") or ""
    key = posixpath.join(location, name).lstrip("/")  # S3Storage's name-to-key rule
    try:
        for upload in uploads.filter(Prefix=key):
            if upload.object_key == key:
                upload.abort()
    except Exception:
        logger.warning("Could not abort the upload of the partial export file %r.", name,
                       exc_info=True)  # fmt: skip
    return True


def _discard(file: Any) -> None:
    # Only the S3 file's local buffer (File.file): its close() would complete the upload.
    try:
        file.file.close()
    except Exception:
        logger.warning("Closing a partial export file's buffer failed.", exc_info=True)


def _finish(
    job: ExportJob,
    status: Any,
    code: str,
    message: str,
    *,
    exc: BaseException | None = None,
    storage: Storage | None = None,
) -> dict[str, Any]:
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "heartbeat_at": now,
        "error_code": code,
        "error_message": str(message),
    }
    if status == Status.COMPLETE:
        fields.update(rows=job.rows, bytes=job.bytes, expires_at=job.expiry_from(now))
    elif status == Status.FAILED:
        fields.update(file_name="")
    # Only a running job ends here: a cancel (or a sweep) that came first wins.
    updated = ExportJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(**fields)
    if not updated and status == Status.COMPLETE and storage is not None:
        _delete_quietly(storage, job.file_name)
    if status == Status.CANCELLED or not updated:
        ExportJob.objects.filter(pk=job.pk).update(file_name="")
    job.refresh_from_db()
    if exc is not None and status == Status.FAILED:
        logger.info("Export job %s failed (%s): %s", job.pk, code, exc)
    _announce(job)
    return {"status": job.status, "rows": job.rows, "bytes": job.bytes}


def _announce(job: ExportJob) -> None:
    for receiver, result in export_job_finished.send_robust(sender=ExportJob, job=job):
        if isinstance(result, Exception):
            logger.error(
                "Export job %s: export_job_finished receiver %r failed.",
                *(job.pk, receiver),
                exc_info=result,
            )
    if conf.JOBS_EMAIL and getattr(job.user, "email", None) and job.page_url:
        from django.core.mail import send_mail

        subject = (
            _("Your export is ready")
            if job.status == Status.COMPLETE
            else _("Your export has ended")
        )
        body = _("%(name)s: %(status)s.\n\n%(url)s") % {
            "name": job.filename or job.format,
            "status": job.get_status_display(),
            "url": job.page_url,
        }
        try:
            send_mail(subject, body, None, [job.user.email])
        except Exception:
            logger.warning("Export job %s: the email failed.", job.pk, exc_info=True)


def sweep_stale_jobs(timeout: float | None = None) -> list[ExportJob]:
    """Fail running jobs whose heartbeat is older than ``timeout`` seconds; return them.

    Default ``STREAMEXPORT_JOBS_HEARTBEAT_TIMEOUT``.  Their partial files are deleted
    (on S3, their unfinished multipart uploads aborted) and their code is ``worker_lost``.
    """
    timeout = conf.JOBS_HEARTBEAT_TIMEOUT if timeout is None else timeout
    cutoff = timezone.now() - timedelta(seconds=timeout)
    swept = []
    for job in ExportJob.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff):
        updated = ExportJob.objects.filter(
            pk=job.pk, status=Status.RUNNING, heartbeat_at__lt=cutoff
        ).update(
            status=Status.FAILED,
            finished_at=timezone.now(),
            error_code=WORKER_LOST,
            error_message=str(JOB_MESSAGES[WORKER_LOST]),
            file_name="",
        )
        if updated:
            if job.file_name:
                storage = storages[job.storage or conf.JOBS_STORAGE]
                _abort_uploads(storage, job.file_name)  # the dead worker's, on S3
                _delete_quietly(storage, job.file_name)
            job.refresh_from_db()
            _announce(job)
            swept.append(job)
    return swept


def prune_expired_jobs(*, delete_after: float | None = None) -> tuple[int, int]:
    """Delete the files of expired jobs (status ``expired``); return ``(expired, deleted)``.

    With ``delete_after`` (seconds), finished jobs older than that are deleted too
    (rows), after their files.
    """
    now = timezone.now()
    expired = 0
    for job in ExportJob.objects.filter(status=Status.COMPLETE, expires_at__lte=now):
        if job.file_name:
            _delete_quietly(storages[job.storage or conf.JOBS_STORAGE], job.file_name)
        expired += ExportJob.objects.filter(pk=job.pk, status=Status.COMPLETE).update(
            status=Status.EXPIRED, file_name=""
        )
    deleted = 0
    if delete_after is not None:
        old = ExportJob.objects.filter(
            status__in=ExportJob.FINISHED,
            finished_at__lt=now - timedelta(seconds=delete_after),
            file_name="",
        )
        deleted, _counts = old.delete()
    return expired, deleted
