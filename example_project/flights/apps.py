from django.apps import AppConfig


class FlightsConfig(AppConfig):
    name = "flights"
    verbose_name = "NYC flights 2013"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Log every export's audit record (django_streamexport.signals).
        from flights import export_audit  # noqa: F401
