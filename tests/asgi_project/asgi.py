"""ASGI entry point: ``uvicorn tests.asgi_project.asgi:application``.

Django's "must consume synchronous iterators" warning (a sync iterator read
whole into memory under ASGI) is an error in this server, so a response that
would be buffered fails instead of passing.
"""

import os
import warnings

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.asgi_project.settings"
warnings.filterwarnings("error", message="StreamingHttpResponse must consume", category=Warning)

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
