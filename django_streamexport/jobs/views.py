"""A job's status resource, its download and its cancel, for its owner (or a superuser).

Include ``django_streamexport.jobs.urls`` in the project's URLs, e.g.
``path("exports/jobs/", include("django_streamexport.jobs.urls"))``.  Anonymous users
are sent to log in (``LOGIN_URL``); another user's job is a 404, so ids are not an oracle.
"""

from __future__ import annotations

import inspect
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.files.storage import storages
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from django_streamexport.http import attachment_header
from django_streamexport.jobs.conf import jobs_conf as conf
from django_streamexport.jobs.models import ExportJob
from django_streamexport.jobs.runner import cancel_job

__all__ = ["cancel", "download", "download_response", "status", "visible_jobs"]


def visible_jobs(user: Any) -> Any:
    """Return the jobs ``user`` may see: their own; every job for a superuser."""
    jobs = ExportJob.objects.all()
    return jobs if user.is_superuser else jobs.filter(user=user)


def _job(request: HttpRequest, job_id: Any) -> ExportJob:
    return get_object_or_404(visible_jobs(request.user), pk=job_id)


def job_resource(request: HttpRequest, job: ExportJob) -> dict[str, Any]:
    """Return the status resource of ``job`` with absolute URLs for ``request``."""
    download = request.build_absolute_uri(reverse("streamexport_jobs:download", args=[job.pk]))
    data = job.to_dict(download_url=download)
    data["url"] = request.build_absolute_uri(reverse("streamexport_jobs:status", args=[job.pk]))
    data["cancel_url"] = (
        request.build_absolute_uri(reverse("streamexport_jobs:cancel", args=[job.pk]))
        if not job.is_finished
        else None
    )
    return data


@login_required
@require_GET
def status(request: HttpRequest, job_id: Any) -> HttpResponse:
    """``GET``: the job as JSON (``status``, ``progress``, ``rows``, ``download_url``...)."""
    response = JsonResponse(job_resource(request, _job(request, job_id)))
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def cancel(request: HttpRequest, job_id: Any) -> HttpResponse:
    """``POST`` (with the CSRF token): cancel a queued or running job; answer its status.

    409 when the job had already ended.
    """
    job = _job(request, job_id)
    cancelled = cancel_job(job)
    return JsonResponse(job_resource(request, job), status=200 if cancelled else 409)


@login_required
@require_GET
def download(request: HttpRequest, job_id: Any) -> HttpResponseBase:
    """``GET``: the job's file (404 unless complete and not expired).

    See :func:`download_response`.
    """
    job = _job(request, job_id)
    if not job.is_downloadable:
        raise Http404(_("This export has no file to download."))
    return download_response(job)


def download_response(job: ExportJob) -> HttpResponseBase:
    """Return the response that sends ``job``'s file to its (already checked) user.

    A local storage (one with ``path()``): the file streamed by Django
    (``FileResponse``, ``Content-Disposition: attachment``), or, with
    ``STREAMEXPORT_JOBS_X_ACCEL_REDIRECT``, an empty response whose
    ``X-Accel-Redirect`` has nginx send it.  Any other storage: a 302 to
    ``storage.url()``, which for django-storages' S3 is a signed URL valid
    ``STREAMEXPORT_JOBS_URL_EXPIRE`` seconds that names the download
    (``ResponseContentDisposition``).
    """
    storage = storages[job.storage or conf.JOBS_STORAGE]
    disposition = attachment_header(job.filename or "export")
    try:
        path = storage.path(job.file_name)
    except NotImplementedError:
        return HttpResponseRedirect(_signed_url(storage, job.file_name, disposition))
    if conf.JOBS_X_ACCEL_REDIRECT:
        response: HttpResponseBase = HttpResponse(content_type=_content_type(job))
        response["X-Accel-Redirect"] = conf.JOBS_X_ACCEL_REDIRECT.rstrip("/") + "/" + job.file_name
    else:
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            raise Http404(_("The export's file is gone.")) from None
        response = FileResponse(handle, content_type=_content_type(job))
    response["Content-Disposition"] = disposition
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _content_type(job: ExportJob) -> str:
    return job.content_type or "application/octet-stream"


def _signed_url(storage: Any, name: str, disposition: str) -> str:
    parameters = inspect.signature(storage.url).parameters
    kwargs: dict[str, Any] = {}
    if "parameters" in parameters:  # django-storages' S3Storage
        kwargs["parameters"] = {"ResponseContentDisposition": disposition}
    if "expire" in parameters:
        kwargs["expire"] = conf.JOBS_URL_EXPIRE
    return storage.url(name, **kwargs)
