"""App configuration: registers the system checks and logs the serving ones in gevent workers."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class StreamExportConfig(AppConfig):
    name = "django_streamexport"
    verbose_name = _("Streaming exports")

    def ready(self) -> None:
        from django_streamexport import checks  # (importing registers the checks)

        # Checks never run under gunicorn; log the ones about serving where they matter.
        checks.log_serving_warnings()
