"""Settings of the uvicorn-served test project: the test suite's, on its test database.

The server runs in another process while pytest holds the test database, so it
connects to that database by its test name; ``application_name`` lets the
tests find the server's sessions in ``pg_stat_activity``.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

APPLICATION_NAME = "streamexport-asgi-test"

DATABASES = {
    "default": {
        **DATABASES["default"],
        "NAME": DATABASES["default"]["TEST"]["NAME"],
        "OPTIONS": {"application_name": APPLICATION_NAME},
    },
}
ROOT_URLCONF = "tests.asgi_project.urls"
