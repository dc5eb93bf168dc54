"""Django's task framework: ``django.tasks`` (Django 6.0+) or the ``django-tasks`` backport.

The backport (``pip install django-tasks``, ``"django_tasks"`` in ``INSTALLED_APPS``) serves
Django 5.2 with the same API under another module name; backends such as django-tasks-db
pick the module the same way (``importlib.util.find_spec("django.tasks")``).
"""

from importlib.util import find_spec

if find_spec("django.tasks"):
    from django.tasks import task, task_backends
    from django.tasks.exceptions import InvalidTaskBackend as InvalidTaskBackendError
elif find_spec("django_tasks"):  # pragma: no cover - depends on the Django version
    from django_tasks import task, task_backends  # type: ignore[no-redef,assignment]
    from django_tasks.exceptions import (  # type: ignore[assignment]
        InvalidTaskBackendError,
    )
else:  # pragma: no cover
    raise ImportError(
        "Background exports need Django's task framework: Django 6.0 or later, or the "
        "django-tasks backport on Django 5.2 (pip install django-tasks)."
    )

__all__ = ["InvalidTaskBackendError", "task", "task_backends"]
