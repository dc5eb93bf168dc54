"""App configuration: registers the system checks."""

from django.apps import AppConfig


class StreamExportConfig(AppConfig):
    name = "django_streamexport"
    verbose_name = "Streaming exports"

    def ready(self) -> None:
        from django_streamexport import checks  # noqa: F401  (registers the checks)
