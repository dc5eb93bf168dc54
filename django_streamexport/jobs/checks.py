"""System checks of background exports (ids ``django_streamexport.J001`` to ``J003``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

from django_streamexport.conf import conf
from django_streamexport.plan import is_integer


def is_seconds(value: Any) -> bool:
    """Say whether ``value`` is a positive, finite number of seconds (not a ``bool``)."""
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
    )


@register(Tags.compatibility)
def check_jobs_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """J001 numbers, J002 the storage alias, J003 the task backend alias and its queue."""
    errors: list[Error] = []
    if not (is_integer(conf.BACKGROUND_ROWS) and conf.BACKGROUND_ROWS >= 0):
        errors.append(_number_error("STREAMEXPORT_BACKGROUND_ROWS", "a non-negative integer"))
    for name in ("JOBS_EXPIRE_AFTER", "JOBS_HEARTBEAT_INTERVAL", "JOBS_HEARTBEAT_TIMEOUT"):
        if not is_seconds(getattr(conf, name)):
            errors.append(_number_error(f"STREAMEXPORT_{name}", "a positive number of seconds"))
    if (
        is_seconds(conf.JOBS_HEARTBEAT_INTERVAL)
        and is_seconds(conf.JOBS_HEARTBEAT_TIMEOUT)
        and conf.JOBS_HEARTBEAT_TIMEOUT <= conf.JOBS_HEARTBEAT_INTERVAL
    ):
        errors.append(
            Error(
                "STREAMEXPORT_JOBS_HEARTBEAT_TIMEOUT must be longer than "
                "STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL, or every running job is swept.",
                hint="Use several intervals, e.g. 60 times the interval.",
                id="django_streamexport.J001",
            )
        )
    if conf.JOBS_STORAGE not in settings.STORAGES:
        errors.append(
            Error(
                f"STREAMEXPORT_JOBS_STORAGE is {conf.JOBS_STORAGE!r}, which is not an alias "
                "in STORAGES.",
                hint=f"Use one of {sorted(settings.STORAGES)} or add it to STORAGES.",
                id="django_streamexport.J002",
            )
        )
    errors.extend(_check_task_backend())
    return errors


def _check_task_backend() -> list[Error]:
    from django_streamexport.jobs.compat import InvalidTaskBackendError, task_backends

    alias = conf.JOBS_TASK_BACKEND
    try:
        backend = task_backends[alias]
    except InvalidTaskBackendError:
        return [
            Error(
                f"STREAMEXPORT_JOBS_TASK_BACKEND is {alias!r}, which is not a backend in TASKS.",
                hint="Configure TASKS (Django's task framework) with that alias.",
                id="django_streamexport.J003",
            )
        ]
    queues = getattr(backend, "queues", None)
    if queues and conf.JOBS_QUEUE not in queues:
        return [
            Error(
                f"STREAMEXPORT_JOBS_QUEUE is {conf.JOBS_QUEUE!r}, which is not among the "
                f"QUEUES of the task backend {alias!r} ({sorted(queues)}).",
                hint="Add the queue to that backend's QUEUES, or change the setting.",
                id="django_streamexport.J003",
            )
        ]
    return []


def _number_error(name: str, what: str) -> Error:
    return Error(f"{name} must be {what}.", id="django_streamexport.J001")
