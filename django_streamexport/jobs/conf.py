"""Typed, lazily read ``STREAMEXPORT_*`` settings of background exports (the jobs app).

Read at call time, like :mod:`django_streamexport.conf`; validated at start-up by
:mod:`django_streamexport.jobs.checks` (ids ``django_streamexport.J001`` to ``J011``), which
run only where ``django_streamexport.jobs`` is installed.
"""

from __future__ import annotations

from django.conf import settings


class JobsSettings:
    """Read the background exports' ``STREAMEXPORT_*`` settings with their defaults."""

    @property
    def BACKGROUND_ROWS(self) -> int:
        """Planner row estimate above which ``background = "auto"`` runs an export as a job.

        Default 1,000,000 rows.  Check J001.
        """
        return getattr(settings, "STREAMEXPORT_BACKGROUND_ROWS", 1_000_000)

    @property
    def JOBS_STORAGE(self) -> str:
        """``STORAGES`` alias background exports are written into.

        Default ``"default"``. Check J002.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_STORAGE", "default")

    @property
    def JOBS_PATH(self) -> str:
        """Folder of the storage the files go in, one sub-folder per job.

        Default ``"exports"``. Check J003.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_PATH", "exports")

    @property
    def JOBS_TASK_BACKEND(self) -> str:
        """``TASKS`` alias of the task backend that runs export jobs.

        Default ``"default"``. Check J004.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_TASK_BACKEND", "default")

    @property
    def JOBS_QUEUE(self) -> str:
        """Queue name export tasks are enqueued on. Default ``"default"``.

        Must be one of the backend's ``QUEUES``.  Check J005.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_QUEUE", "default")

    @property
    def JOBS_EXPIRE_AFTER(self) -> float:
        """Seconds a finished export's file is kept (then pruned).

        Default 86400 (a day). Check J006.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_EXPIRE_AFTER", 86400)

    @property
    def JOBS_HEARTBEAT_INTERVAL(self) -> float:
        """Seconds between a running job's progress writes (its heartbeat). Default 2.

        Cancelling is noticed within about this time.  Check J007.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL", 2)

    @property
    def JOBS_HEARTBEAT_TIMEOUT(self) -> float:
        """Seconds without a heartbeat after which a running job is failed by the sweep.

        Default 120.  Must exceed ``JOBS_HEARTBEAT_INTERVAL``.  Check J008.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_HEARTBEAT_TIMEOUT", 120)

    @property
    def JOBS_URL_EXPIRE(self) -> int:
        """Seconds a signed download URL of object storage stays valid. Default 300. Check J009."""
        return getattr(settings, "STREAMEXPORT_JOBS_URL_EXPIRE", 300)

    @property
    def JOBS_X_ACCEL_REDIRECT(self) -> str | None:
        """URL prefix of an nginx ``internal`` location serving the storage's folder.

        Default ``None``: local files are streamed by Django (``FileResponse``).  With a
        prefix such as ``"/protected-exports/"``, downloads answer with
        ``X-Accel-Redirect: <prefix><file name>`` and nginx sends the file.  Check J010.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_X_ACCEL_REDIRECT", None)

    @property
    def JOBS_EMAIL(self) -> bool:
        """Email the user a link to the job's page when a job ends. Default False. Check J011.

        Sent with ``send_mail()``: the project's mail settings apply (``EMAIL_BACKEND``, or
        ``MAILERS`` on Django 6.1).  A failed email is logged as a warning.
        """
        return getattr(settings, "STREAMEXPORT_JOBS_EMAIL", False)


jobs_conf = JobsSettings()
