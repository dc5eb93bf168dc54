from django.apps import AppConfig


class FlightsConfig(AppConfig):
    name = "flights"
    verbose_name = "NYC flights 2013"
    default_auto_field = "django.db.models.BigAutoField"
