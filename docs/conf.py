"""Sphinx configuration of the django-streamexport documentation.

Build (what ``nox -s docs`` runs; warnings are errors)::

    pip install -e ".[docs,drf,filter]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

Pages are Markdown (MyST) or reST.  The settings and checks references are generated from
the code by the local extension ``_ext/streamexport_docs.py``; the quickstart shows the
README's two set-up commands, and the deployment page deploy/README.md, through its
``{readme-section}`` blocks (every other page owns its text).  Django is set up
with the minimal settings below (no ``STREAMEXPORT_*`` setting, so the settings reference
reads the defaults) so that autodoc can import every module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import django
from django.conf import settings

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS.parent), str(DOCS / "_ext")]

settings.configure(
    SECRET_KEY="docs-only-not-secret",
    USE_TZ=True,
    INSTALLED_APPS=[
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django_streamexport",
        "django_streamexport.jobs",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
)
django.setup()

from django_streamexport import __version__  # noqa: E402  (after django.setup())

project = "django-streamexport"
author = "django-streamexport contributors"
copyright = "django-streamexport contributors"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "streamexport_docs",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

# MyST: GitHub-style anchors for headings down to ####, so "page.md#heading" links resolve.
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]

# The docstrings are reST with roles (:func:, :class:); autodoc reads them as they are
# (no napoleon).  Cross-references that do not resolve are not errors (nitpicky off):
# many name Django's or psycopg's objects, and the build fetches no other project's
# inventory (no intersphinx: it must build offline).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False

html_theme = "furo"
html_title = f"django-streamexport {release}"
