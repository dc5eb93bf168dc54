"""Settings for the test suite: PostgreSQL as ``default``, SQLite as ``sqlite``.

PostgreSQL is required: when it cannot be reached, the database setup fails
and every test that needs it errors (CI fails rather than skips).
``PGHOST``, ``PGPORT``, ``PGUSER`` and ``PGPASSWORD`` override the server;
``STREAMEXPORT_TEST_DB_NAME`` the test database's name.
"""

import os
import tempfile
from importlib.util import find_spec

import django

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "America/New_York"
ALLOWED_HOSTS = ["*"]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGHOST", "127.0.0.1"),
        "PORT": os.environ.get("PGPORT", "5432"),
        "USER": os.environ.get("PGUSER", "postgres"),
        "PASSWORD": os.environ.get("PGPASSWORD", ""),
        "NAME": "postgres",
        # Each checkout (or worktree) running tests at once needs its own test database.
        "TEST": {"NAME": os.environ.get("STREAMEXPORT_TEST_DB_NAME", "test_streamexport")},
    },
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
    },
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_streamexport",
    # Background exports, with django-tasks-db's tables (its app label: django_tasks_database)
    # and, on Django 5.2, the django-tasks backport of django.tasks.
    *([] if find_spec("django.tasks") else ["django_tasks"]),
    "django_tasks_db",
    "django_rq",  # django-tasks-rq's backend needs it (check "django_rq app not installed")
    "django_streamexport.jobs",
    "tests.testapp",
    "flights",  # the example project (example_project/ is on pytest's pythonpath)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# RQ's queue on Redis (127.0.0.1:6379, database 5): named per test process, so runs side by
# side do not take each other's jobs; its workers get the name in the environment.
RQ_QUEUE = os.environ.get("STREAMEXPORT_RQ_QUEUE") or f"streamexport-exports-{os.getpid()}"
RQ_QUEUES = {
    RQ_QUEUE: {
        "HOST": os.environ.get("STREAMEXPORT_REDIS_HOST", "127.0.0.1"),
        "PORT": int(os.environ.get("STREAMEXPORT_REDIS_PORT", "6379")),
        "DB": 5,
    }
}
# Background exports: the immediate backend for unit tests (tests/test_jobs.py); the
# tests with real workers (tests/test_jobs_workers.py) enqueue on "db" and "rq".
TASKS = {
    "default": {
        "BACKEND": "django_tasks.backends.immediate.ImmediateBackend"
        if not find_spec("django.tasks")
        else "django.tasks.backends.immediate.ImmediateBackend"
    },
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["exports"]},
    "rq": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": [RQ_QUEUE]},
}
MEDIA_ROOT = os.environ.get("STREAMEXPORT_MEDIA_ROOT") or tempfile.mkdtemp(prefix="se-media-")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Django 6.1 replaces EMAIL_BACKEND with MAILERS and warns (RemovedInDjango2028Warning, an
# error here) when mail is sent without it; the test environment points every mailer at
# mail.outbox.
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
