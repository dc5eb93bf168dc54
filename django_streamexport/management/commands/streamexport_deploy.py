"""``manage.py streamexport_deploy DIR``: write the deployment templates into ``DIR``.

::

    python manage.py streamexport_deploy deploy          # then adapt and install them
    python manage.py streamexport_deploy deploy --force  # overwrite files written before

Writes :data:`TEMPLATES` (gunicorn's configuration for gevent workers, the nginx site and
its export locations, a systemd unit) from the package's ``deploy_templates`` directory
into ``DIR``, with the same layout, so the comments' paths (``deploy/gunicorn.conf.py``,
``deploy/nginx/...``) hold when ``DIR`` is ``deploy``.  ``DIR`` and its parents are
created.  Existing files are never overwritten without ``--force``: when any target
exists, nothing is written and the command fails naming them.  A ``DIR`` that is not a
directory, or that cannot be created or written, is a ``CommandError`` (exit 1).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

#: The files written, as paths relative to ``django_streamexport/deploy_templates`` (and to
#: ``DIR``).  The repository's ``deploy/`` directory holds links to the same files
#: (tests/test_management_deploy.py keeps both lists equal).
TEMPLATES = (
    "gunicorn.conf.py",
    "nginx/streamexport-locations.conf",
    "nginx/streamexport.conf",
    "streamexport-gunicorn.service",
)


def template_bytes(name: str) -> bytes:
    """Return the content of deployment template ``name`` (one of :data:`TEMPLATES`)."""
    resource = files("django_streamexport").joinpath("deploy_templates", *name.split("/"))
    return resource.read_bytes()


class Command(BaseCommand):
    help = (
        "Write django-streamexport's deployment templates (gunicorn.conf.py, nginx site and "
        "locations, systemd unit) into DIR."
    )
    # Writing files needs no valid project; a project being fixed can still get them.
    requires_system_checks = ()

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("directory", metavar="DIR", help="Directory to write the files into.")
        parser.add_argument(
            "--force", action="store_true", help="Overwrite files that already exist in DIR."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["directory"])
        if directory.exists() and not directory.is_dir():
            raise CommandError(f"{directory} exists and is not a directory.")
        targets = {name: directory.joinpath(*name.split("/")) for name in TEMPLATES}
        existing = [str(path) for path in targets.values() if path.exists()]
        if existing and not options["force"]:
            raise CommandError(
                f"Not overwriting {', '.join(existing)}: use --force to replace them. "
                "Nothing was written."
            )
        # Read first: a template missing from the installed package is not DIR's fault.
        contents = {name: template_bytes(name) for name in TEMPLATES}
        for name, path in targets.items():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(contents[name])
            except OSError as exc:
                raise CommandError(f"Cannot write {path}: {exc.strerror or exc}.") from exc
            if options["verbosity"] >= 1:
                self.stdout.write(f"Wrote {path}")
        if options["verbosity"] >= 1:
            self.stdout.write(
                "Next: adapt the upstream address, server_name, TLS and paths to your project; "
                "every setting's comment gives its reason. Then "
                f"gunicorn -c {targets['gunicorn.conf.py']} yourproject.wsgi:application"
            )
