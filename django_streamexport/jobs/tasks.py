"""The tasks of background exports, for the project's task backend (``TASKS``).

Arguments are JSON values (a job id as ``str``), as every task backend requires.
"""

from __future__ import annotations

from typing import Any

from django_streamexport.jobs.compat import task
from django_streamexport.jobs.runner import prune_expired_jobs, run_job, sweep_stale_jobs


@task()
def run_export_job(job_id: str) -> dict[str, Any]:
    """Run the export job ``job_id``; return ``{"status", "rows", "bytes"}``."""
    return run_job(job_id)


@task()
def clean_up_export_jobs() -> dict[str, int]:
    """Fail jobs whose worker was lost and delete expired files (schedule it, e.g. hourly)."""
    swept = sweep_stale_jobs()
    expired, deleted = prune_expired_jobs()
    return {"swept": len(swept), "expired": expired, "deleted": deleted}
