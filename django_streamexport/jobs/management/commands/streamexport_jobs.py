"""Housekeeping of background exports.

    python manage.py streamexport_jobs sweep     # fail jobs whose worker stopped beating
    python manage.py streamexport_jobs prune     # delete expired files (and, with
                                                 # --delete-after SECONDS, old finished jobs)
    python manage.py streamexport_jobs clean     # both (what the clean_up_export_jobs task does)

Run it from cron or a scheduler, e.g. every few minutes.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_streamexport.jobs.runner import prune_expired_jobs, sweep_stale_jobs


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{text!r} is not a number of seconds.") from None
    if not 0 < value < float("inf"):
        raise CommandError(f"{text!r} is not a positive number of seconds.")
    return value


class Command(BaseCommand):
    help = "Sweep background exports whose worker was lost, and prune expired files."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["sweep", "prune", "clean"])
        parser.add_argument(
            "--timeout",
            help="sweep: seconds without a heartbeat (default: the setting "
            "STREAMEXPORT_JOBS_HEARTBEAT_TIMEOUT).",
        )
        parser.add_argument(
            "--delete-after", help="prune: also delete finished jobs older than SECONDS."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        timeout = _seconds(options["timeout"]) if options["timeout"] else None
        delete_after = _seconds(options["delete_after"]) if options["delete_after"] else None
        if action in ("sweep", "clean"):
            swept = sweep_stale_jobs(timeout)
            self.stdout.write(f"Swept {len(swept)} job(s) whose worker was lost.")
        if action in ("prune", "clean"):
            expired, deleted = prune_expired_jobs(delete_after=delete_after)
            self.stdout.write(f"Expired {expired} file(s); deleted {deleted} job(s).")
