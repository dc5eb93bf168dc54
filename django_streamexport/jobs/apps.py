"""App configuration of background exports."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ExportJobsConfig(AppConfig):
    name = "django_streamexport.jobs"
    label = "streamexport_jobs"
    verbose_name = _("Background exports")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_streamexport.jobs import checks  # noqa: F401  (importing registers them)
