"""The record of one background export: what was asked, how far it got, where the file is."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

__all__ = ["ExportJob"]


class ExportJob(models.Model):
    """One background export.

    ``source_kind`` and ``source`` name what builds the export at run time: an export
    view (``"view"``, its dotted path, with ``url_kwargs`` and ``query_string``, the
    request's query string) or a ``ModelAdmin`` (``"admin"``, ``"<site name>:<app
    label>.<model name>"``, with ``query_string`` the changelist's filters) or the
    ``streamexport`` command (``"command"``, its options in ``url_kwargs``).  ``format``
    and ``fields`` are what the user chose.  Never a list of primary keys: the rows are
    the ones the source selects when the job runs, with the user's permissions then.

    ``rows`` and ``bytes`` grow while it runs (written every
    ``STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL`` seconds, with ``heartbeat_at``);
    ``rows_estimate`` is the database planner's estimate when it was queued (``None``
    where there is none), so :attr:`progress` is an estimate too.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        COMPLETE = "complete", _("Complete")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")
        EXPIRED = "expired", _("Expired")

    #: Statuses after which nothing changes but expiry.
    FINISHED = (Status.COMPLETE, Status.FAILED, Status.CANCELLED, Status.EXPIRED)

    class SourceKind(models.TextChoices):
        VIEW = "view", _("Export view")
        ADMIN = "admin", _("Admin changelist")
        COMMAND = "command", _("Management command")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="export_jobs",
        verbose_name=_("user"),
    )
    source_kind = models.CharField(_("source kind"), max_length=10, choices=SourceKind.choices)
    source = models.CharField(_("source"), max_length=300)
    url_kwargs = models.JSONField(_("URL arguments"), default=dict, blank=True)
    query_string = models.TextField(_("query"), blank=True)
    format = models.CharField(_("format"), max_length=40)
    fields = models.JSONField(_("fields"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    rows = models.BigIntegerField(_("rows written"), default=0)
    bytes = models.BigIntegerField(_("bytes written"), default=0)
    rows_estimate = models.BigIntegerField(_("estimated rows"), null=True, blank=True)
    task_id = models.CharField(_("task id"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("queued at"), default=timezone.now, db_index=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    heartbeat_at = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True, db_index=True)
    error_code = models.CharField(_("failure code"), max_length=40, blank=True)
    error_message = models.TextField(_("failure message"), blank=True)
    storage = models.CharField(_("storage"), max_length=100, blank=True)
    file_name = models.CharField(_("file name in storage"), max_length=500, blank=True)
    filename = models.CharField(_("download file name"), max_length=255, blank=True)
    content_type = models.CharField(_("media type"), max_length=200, blank=True)
    #: Where the user follows the job (absolute URL, for the optional email).
    page_url = models.URLField(_("job page"), max_length=500, blank=True)

    class Meta:
        verbose_name = _("background export")
        verbose_name_plural = _("background exports")
        ordering = ("-created_at",)
        indexes = (models.Index(fields=("user", "-created_at")),)

    def __str__(self) -> str:
        return f"{self.filename or self.format} ({self.get_status_display()})"

    def get_absolute_url(self) -> str:
        """The job's status resource (``django_streamexport.jobs.urls``), or ``""``."""
        try:
            return reverse("streamexport_jobs:status", args=[self.pk])
        except NoReverseMatch:
            return ""

    @property
    def progress(self) -> float | None:
        """Rows written over the planner's estimate, 0.0 to 1.0; 1.0 once complete.

        ``None`` when there is no estimate.  An estimate: it can stay below 1.0 until
        the job completes, or reach 1.0 early (capped).
        """
        if self.status == self.Status.COMPLETE:
            return 1.0
        if not self.rows_estimate:
            return None
        return min(1.0, self.rows / self.rows_estimate)

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_downloadable(self) -> bool:
        """Complete, with a file, not expired."""
        return (
            self.status == self.Status.COMPLETE
            and bool(self.file_name)
            and (self.expires_at is None or self.expires_at > timezone.now())
        )

    def expiry_from(self, when: Any) -> Any:
        from django_streamexport.jobs.conf import jobs_conf as conf

        return when + timedelta(seconds=conf.JOBS_EXPIRE_AFTER)

    def to_dict(self, download_url: str | None = None) -> dict[str, Any]:
        """Return the job's status resource: JSON-ready ``dict`` of plain values."""

        def iso(value: Any) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.pk),
            "status": self.status,
            "format": self.format,
            "filename": self.filename,
            "rows": self.rows,
            "bytes": self.bytes,
            "rows_estimate": self.rows_estimate,
            "progress": self.progress,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "expires_at": iso(self.expires_at),
            "error": (
                {"code": self.error_code, "message": self.error_message}
                if self.error_code
                else None
            ),
            "download_url": download_url if self.is_downloadable else None,
        }
