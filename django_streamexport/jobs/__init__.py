"""Background exports: the export pipeline as a task of Django's task framework, into storage.

An optional app (``"django_streamexport.jobs"`` in ``INSTALLED_APPS``): projects that only
stream add no tables.  An :class:`~django_streamexport.jobs.models.ExportJob` records what
was asked (an export view and its query string, or a ``ModelAdmin`` and its changelist
filters; never a list of primary keys), and the task
:func:`~django_streamexport.jobs.tasks.run_export_job` rebuilds the same export plan at
run time, with the user's permissions checked again, and writes it into a ``STORAGES``
alias.  See docs/background-exports.md.
"""
