"""WSGI entry point of the test server (DJANGO_SETTINGS_MODULE=tests.server_settings)."""

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
