"""Settings of the task workers the background-export tests start (tests/job_servers.py).

The suite's settings, reading the test database the test process created
(``STREAMEXPORT_SERVER_DB_NAME``) and its storage folder (``STREAMEXPORT_MEDIA_ROOT``, read
by tests/settings.py), with the export log on stderr.  From the environment too:
``STREAMEXPORT_CHUNK_SIZE`` (rows per fetch: small makes an export slow enough to be
caught mid-way), ``STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL`` (seconds, default 0.2 here),
``STREAMEXPORT_EXTRA_STORAGES`` (JSON: ``STORAGES`` aliases added, such as the S3 one the
tests give the test process too) and ``AWS_S3_FILE_BUFFER_SIZE`` (django-storages' part
size).  The workers' database sessions are named ``streamexport-test-worker``
(``application_name``), so the tests find them in ``pg_stat_activity``.
"""

import copy
import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as BASE_DATABASES
from tests.settings import STORAGES as BASE_STORAGES

DATABASES = {"default": copy.deepcopy(BASE_DATABASES["default"])}
DATABASES["default"]["NAME"] = os.environ["STREAMEXPORT_SERVER_DB_NAME"]
DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["OPTIONS"] = {"application_name": "streamexport-test-worker"}

if os.environ.get("STREAMEXPORT_CHUNK_SIZE"):
    STREAMEXPORT_CHUNK_SIZE = int(os.environ["STREAMEXPORT_CHUNK_SIZE"])
STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL = float(
    os.environ.get("STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL", "0.2")
)
STORAGES = {**BASE_STORAGES, **json.loads(os.environ.get("STREAMEXPORT_EXTRA_STORAGES", "{}"))}
if os.environ.get("AWS_S3_FILE_BUFFER_SIZE"):
    AWS_S3_FILE_BUFFER_SIZE = int(os.environ["AWS_S3_FILE_BUFFER_SIZE"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "django_streamexport": {"handlers": ["stderr"], "level": "INFO"},
        "django_tasks_db": {"handlers": ["stderr"], "level": "INFO"},
        "django_tasks": {"handlers": ["stderr"], "level": "INFO"},
        "rq": {"handlers": ["stderr"], "level": "INFO"},
    },
}
