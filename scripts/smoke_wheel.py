#!/usr/bin/env python3
"""Smoke-test an installed django-streamexport (the built wheel, in a fresh venv).

Run by ``nox -s build`` with the venv's Python, from outside the source tree, so
``django_streamexport`` is the installed copy::

    python smoke_wheel.py --source /path/to/checkout/django_streamexport

Checks, failing with exit status 1 and a message on the first problem:

1. ``django_streamexport`` is imported from site-packages, not from the checkout.
2. Every file of the source package's ``templates/``, ``static/``, ``locale/`` and
   ``deploy_templates/`` (and ``py.typed``) is in the installed package, found through
   ``importlib.resources``; the templates, static files and deploy templates are not empty.
3. A minimal project written into a temporary directory (``django_streamexport`` and the
   admin in ``INSTALLED_APPS``, a model with an ``ExportAdminMixin`` admin and an export
   view, SQLite) passes ``python -W error -m django check --fail-level WARNING``: no
   check message and no Python warning.
4. In that project: ``migrate``; the admin's templates and the export page's script are
   found by Django's loaders; ``GET /export/?format=csv`` streams the rows;
   ``streamexport_deploy`` writes the deploy templates byte for byte.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from importlib.resources import files
from pathlib import Path

#: Directories of package data, relative to the package.
DATA_DIRS = ("templates", "static", "locale", "deploy_templates")
#: Of those, the ones that must not be empty.
REQUIRED_DIRS = ("templates", "static", "deploy_templates")

SETTINGS = """\
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "smoke-test-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_streamexport",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
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
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
"""

MODELS = """\
from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    total = models.DecimalField(max_digits=10, decimal_places=2)
"""

ADMIN = """\
from django.contrib import admin
from django_streamexport.admin import ExportAdminMixin

from shop.models import Order


@admin.register(Order)
class OrderAdmin(ExportAdminMixin, admin.ModelAdmin):
    list_display = ["id", "customer", "total"]
"""

URLS = """\
from django.contrib import admin
from django.urls import path
from django_streamexport.views import StreamingExportView

from shop.models import Order


class OrderExport(StreamingExportView):
    model = Order
    export_fields = ["id", "customer", "total"]


urlpatterns = [path("admin/", admin.site.urls), path("export/", OrderExport.as_view())]
"""

EXERCISE = """\
import django
from pathlib import Path

django.setup()
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.template.loader import get_template
from django.test import Client
from importlib.resources import files

from shop.models import Order

for name in ("admin/django_streamexport/change_list.html", "admin/django_streamexport/export.html"):
    get_template(name)
assert finders.find("django_streamexport/export.js"), "export.js is not found by staticfiles"
Order.objects.create(customer="Ada", total="12.50")
Order.objects.create(customer="=cmd", total="-1")
response = Client().get("/export/?format=csv")
assert response.status_code == 200, response.status_code
body = b"".join(response.streaming_content)
assert body == b"ID,Customer,Total\\r\\n1,Ada,12.50\\r\\n2,'=cmd,-1.00\\r\\n", body
call_command("streamexport_deploy", "deploy", verbosity=0)
from django_streamexport.management.commands.streamexport_deploy import TEMPLATES, template_bytes

for name in TEMPLATES:
    assert Path("deploy", name).read_bytes() == template_bytes(name), name
print(f"export: {len(body)} bytes of CSV; deploy: {len(TEMPLATES)} files written")
"""


def fail(message: str) -> None:
    print(f"smoke: FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def check_data_files(source: Path) -> int:
    """Check that every data file of ``source`` is in the installed package; return how many."""
    import django_streamexport

    installed = Path(django_streamexport.__file__).resolve().parent
    if installed == source.resolve():
        fail(f"django_streamexport is imported from the checkout ({installed}), not the wheel")
    package = files("django_streamexport")
    names = ["py.typed"]
    for directory in DATA_DIRS:
        found = sorted(
            path.relative_to(source).as_posix()
            for path in (source / directory).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        )
        if directory in REQUIRED_DIRS and not found:
            fail(f"the source package has no {directory}/ files")
        names += found
    for name in names:
        resource = package.joinpath(*name.split("/"))
        if not resource.is_file():
            fail(f"{name} is missing from the installed package ({installed})")
        if resource.read_bytes() != (source / name).read_bytes():
            fail(f"{name} differs between the installed package and the source")
    print(f"smoke: {len(names)} data files present in {installed}")
    return len(names)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("smoke: $ python", " ".join(args))
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    output = (result.stdout + result.stderr).strip()
    if output:
        print(textwrap.indent(output, "    "))
    if result.returncode != 0:
        fail(f"{' '.join(args)} exited {result.returncode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="the checkout's package")
    options = parser.parse_args()
    check_data_files(options.source)
    with tempfile.TemporaryDirectory(prefix="streamexport-smoke-") as tmp:
        project = Path(tmp)
        (project / "shop" / "migrations").mkdir(parents=True)
        (project / "shop" / "__init__.py").write_text("")
        (project / "shop" / "migrations" / "__init__.py").write_text("")
        (project / "shop" / "models.py").write_text(MODELS)
        (project / "shop" / "admin.py").write_text(ADMIN)
        (project / "settings.py").write_text(SETTINGS)
        (project / "urls.py").write_text(URLS)
        (project / "exercise.py").write_text(EXERCISE)
        env = {
            **os.environ,
            "PYTHONPATH": str(project),
            "DJANGO_SETTINGS_MODULE": "settings",
            "PYTHONWARNINGS": "error",
        }
        run(["-W", "error", "-m", "django", "check", "--fail-level", "WARNING"], project, env)
        run(["-W", "error", "-m", "django", "makemigrations", "shop", "-v", "0"], project, env)
        run(["-W", "error", "-m", "django", "migrate", "-v", "0"], project, env)
        run(["-W", "error", "exercise.py"], project, env)
    print("smoke: OK")


if __name__ == "__main__":
    main()
