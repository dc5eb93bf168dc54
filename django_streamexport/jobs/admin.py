"""The admin of background exports: each staff user's own jobs (a superuser's: all).

Staff users see, download, cancel and delete their own jobs without a permission on
the model (a job is theirs); nobody adds or edits one here.  Jobs are queued from an
export page's "Run in the background" (:class:`~django_streamexport.admin.ExportAdminMixin`).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.files.storage import storages
from django.db.models import QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
)
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_streamexport.jobs.conf import jobs_conf as conf
from django_streamexport.jobs.models import ExportJob
from django_streamexport.jobs.runner import cancel_job
from django_streamexport.jobs.views import download_response


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = ("__str__", "source_label", "status", "progress_bar", "rows", "size",
                    "created_at", "expires_at", "download_link")  # fmt: skip
    list_filter = ("status", "format")
    date_hierarchy = "created_at"
    actions = ("cancel_jobs",)
    readonly_fields = (
        *(field.name for field in ExportJob._meta.fields),
        "progress_bar",
        "download_link",
    )

    # --- whose jobs -----------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        jobs = super().get_queryset(request).select_related("user")
        return jobs if request.user.is_superuser else jobs.filter(user=request.user)

    def _owns(self, request: HttpRequest, obj: ExportJob | None) -> bool:
        user = request.user
        if not (user.is_active and user.is_staff):
            return False
        return obj is None or user.is_superuser or obj.user_id == user.pk

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._owns(request, None)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owns(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._owns(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    # --- columns ----------------------------------------------------------------------------

    @admin.display(description=_("source"))
    def source_label(self, job: ExportJob) -> str:
        return job.source.rpartition(":")[2].rpartition(".")[2] if job.source else "-"

    @admin.display(description=_("progress"))
    def progress_bar(self, job: ExportJob) -> str:
        progress = job.progress
        if progress is None:
            return "-" if job.is_finished else format_html("<progress></progress>")
        return format_html(
            '<progress value="{}" max="100" title="{}%">{}%</progress>',
            round(progress * 100),
            round(progress * 100),
            round(progress * 100),
        )

    @admin.display(description=_("size"))
    def size(self, job: ExportJob) -> str:
        return filesizeformat(job.bytes)

    @admin.display(description=_("download"))
    def download_link(self, job: ExportJob) -> str:
        if not job.is_downloadable:
            return "-"
        return format_html('<a href="{}">{}</a>', self._url("download", job.pk), _("Download"))

    # --- actions, download, deletion --------------------------------------------------------

    @admin.action(description=_("Cancel selected background exports"))
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = sum(cancel_job(job) for job in queryset)
        self.message_user(
            request,
            ngettext("%d export cancelled.", "%d exports cancelled.", count) % count,
            messages.SUCCESS,
        )

    def get_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<uuid:job_id>/download/",
                self.admin_site.admin_view(self.download_view),
                name="{}_{}_download".format(*info),
            ),
            path(
                "<uuid:job_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="{}_{}_cancel".format(*info),
            ),
            *super().get_urls(),
        ]

    def download_view(self, request: HttpRequest, job_id: Any) -> HttpResponseBase:
        """The job's file, for its owner or a superuser (404 otherwise or once expired)."""
        job = self.get_queryset(request).filter(pk=job_id).first()
        if job is None or not job.is_downloadable:
            raise Http404
        return download_response(job)

    def cancel_view(self, request: HttpRequest, job_id: Any) -> HttpResponseBase:
        """``POST``: cancel the job (its owner or a superuser); back to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self.get_queryset(request).filter(pk=job_id).first()
        if job is None:
            raise Http404
        if cancel_job(job):
            self.message_user(request, _("The export was cancelled."), messages.SUCCESS)
        else:
            self.message_user(request, _("The export had already ended."), messages.WARNING)
        return redirect(self._url("change", job.pk))

    def _url(self, name: str, job_id: Any) -> str:
        info = (self.admin_site.name, self.opts.app_label, self.opts.model_name, name)
        return reverse("{}:{}_{}_{}".format(*info), args=[job_id])

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "download_url": self._url("download", object_id),
            "cancel_url": self._url("cancel", object_id),
            "refresh_seconds": max(1, round(conf.JOBS_HEARTBEAT_INTERVAL)),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_model(self, request: HttpRequest, obj: ExportJob) -> None:
        cancel_job(obj)
        _delete_file(obj)
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for job in queryset:
            cancel_job(job)
            _delete_file(job)
        super().delete_queryset(request, queryset)


def _delete_file(job: ExportJob) -> None:
    if job.file_name:
        storages[job.storage or conf.JOBS_STORAGE].delete(job.file_name)
