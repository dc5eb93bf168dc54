"""Create or reset the demo logins: superuser demo/demo, view-only staff viewer/viewer."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS, transaction


class Command(BaseCommand):
    help = (
        "Create or reset the demo logins for local demos: the superuser demo/demo and the "
        "staff user viewer/viewer, who may only view flights."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help='The database alias to write the users to (default: "default").',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        users = get_user_model()._default_manager.db_manager(alias)
        view_flight = Permission.objects.db_manager(alias).get(
            content_type__app_label="flights", codename="view_flight"
        )
        with transaction.atomic(using=alias):
            demo, _ = users.get_or_create(username="demo")
            demo.is_active = demo.is_staff = demo.is_superuser = True
            demo.set_password("demo")
            demo.save(using=alias)

            viewer, _ = users.get_or_create(username="viewer")
            viewer.is_active = viewer.is_staff = True
            viewer.is_superuser = False
            viewer.set_password("viewer")
            viewer.save(using=alias)
            viewer.groups.clear()
            viewer.user_permissions.set([view_flight])

        self.stderr.write(
            self.style.WARNING(
                "The logins demo/demo (superuser) and viewer/viewer (staff, may only view "
                "flights) are for local demos. Never run this command on a site others can "
                "reach."
            )
        )
        self.stdout.write(f"Demo users ready in database {alias!r}: demo, viewer.")
