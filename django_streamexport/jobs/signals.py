"""Signals of background exports.

:data:`export_job_finished` is sent (``send_robust()``) when a job ends: complete,
failed or cancelled.  ``sender`` is :class:`~django_streamexport.jobs.models.ExportJob`;
``job`` the job, with its final ``status``, ``rows``, ``bytes`` and ``error_code``.
The streamed export's own signals (:mod:`django_streamexport.signals`) are sent too,
from inside the job's stream.
"""

from django.dispatch import Signal

export_job_finished = Signal()
