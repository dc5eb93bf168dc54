"""Settings of the gunicorn server the fault and load tests start (tests/servers.py).

The suite's settings, reading the test database the test process created
(``STREAMEXPORT_SERVER_DB_NAME``), on ``STREAMEXPORT_SERVER_DB_PORT`` (a closed
port makes the database unreachable), with ``CONN_MAX_AGE`` from
``STREAMEXPORT_SERVER_CONN_MAX_AGE`` (default 0), with the export log on stderr.
"""

import copy
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES as BASE_DATABASES

DATABASES = {"default": copy.deepcopy(BASE_DATABASES["default"])}
DATABASES["default"]["NAME"] = os.environ["STREAMEXPORT_SERVER_DB_NAME"]
DATABASES["default"]["PORT"] = os.environ.get(
    "STREAMEXPORT_SERVER_DB_PORT", DATABASES["default"]["PORT"]
)
# 0 (a connection per request) unless a test asks for persistent connections.
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("STREAMEXPORT_SERVER_CONN_MAX_AGE", 0))

ROOT_URLCONF = "tests.server_urls"

if os.environ.get("STREAMEXPORT_MAX_CONCURRENT_EXPORTS"):
    STREAMEXPORT_MAX_CONCURRENT_EXPORTS = int(os.environ["STREAMEXPORT_MAX_CONCURRENT_EXPORTS"])
STREAMEXPORT_NDJSON_END_RECORD = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django_streamexport": {"handlers": ["stderr"], "level": "INFO"}},
}
