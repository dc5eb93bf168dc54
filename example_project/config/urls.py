from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path

urlpatterns = [
    path("admin/", admin.site.urls),
    # Background exports: each job's status (JSON), download and cancel.
    path("exports/jobs/", include("django_streamexport.jobs.urls")),
    path("", include("flights.urls")),
    # DEMO ONLY: serve the admin's CSS and JavaScript from the app directories even with
    # DEBUG off, so gunicorn alone shows a styled admin. insecure=True skips the DEBUG check
    # of staticfiles' serve(), which is slow and unaudited for production. In production
    # run `manage.py collectstatic` and let the front-end server serve STATIC_ROOT, as
    # deploy/nginx/streamexport.conf does; this route is then never reached.
    re_path(
        rf"^{settings.STATIC_URL.lstrip('/')}(?P<path>.*)$",
        serve_static,
        {"insecure": True},
    ),
]
