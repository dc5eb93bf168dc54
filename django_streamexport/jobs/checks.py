"""System checks of background exports: one id per setting, ``django_streamexport.J001``-``J011``.

Registered when ``django_streamexport.jobs`` is installed (its ``AppConfig.ready()``).
Each message starts with the setting's name and shows the value; each has a hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

from django_streamexport.jobs.conf import jobs_conf
from django_streamexport.plan import is_integer


def is_seconds(value: Any) -> bool:
    """Say whether ``value`` is a positive, finite number of seconds (not a ``bool``)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 < value
        and math.isfinite(value)
    )


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_path(value: Any) -> bool:
    # A relative folder inside the storage: no "..", no leading "/", no backslashes.
    return (
        _is_name(value)
        and not value.startswith("/")
        and "\\" not in value
        and ".." not in value.split("/")
    )


def _storage_alias(value: Any) -> bool:
    return _is_name(value) and value in settings.STORAGES


def _task_backend(value: Any) -> bool:
    from django_streamexport.jobs.compat import InvalidTaskBackendError, task_backends

    if not _is_name(value):
        return False
    try:
        task_backends[value]
    except InvalidTaskBackendError:
        return False
    return True


def _queue(value: Any) -> bool:
    from django_streamexport.jobs.compat import task_backends

    if not _is_name(value):
        return False
    if not _task_backend(jobs_conf.JOBS_TASK_BACKEND):
        return True  # J004 reports the backend
    queues = getattr(task_backends[jobs_conf.JOBS_TASK_BACKEND], "queues", None)
    return not queues or value in queues


def _heartbeat_timeout(value: Any) -> bool:
    interval = jobs_conf.JOBS_HEARTBEAT_INTERVAL
    return is_seconds(value) and (not is_seconds(interval) or value > interval)


#: Per setting: check id, the rule, what the message says a good value is, the hint.
RULES: dict[str, tuple[str, Callable[[Any], bool], str, str]] = {
    "BACKGROUND_ROWS": ("J001", lambda v: is_integer(v) and v >= 0,
                        "a number of rows (an integer >= 0)",
                        "The planner's estimate above which background='auto' queues a job."),
    "JOBS_STORAGE": ("J002", _storage_alias, "an alias in STORAGES",
                     "Add the storage to STORAGES, or name one of its aliases."),
    "JOBS_PATH": ("J003", _is_path, "a relative folder of the storage (no '..', no leading '/')",
                  'For example "exports".'),
    "JOBS_TASK_BACKEND": ("J004", _task_backend, "an alias in TASKS",
                          "Configure TASKS (Django's task framework) with that alias."),
    "JOBS_QUEUE": ("J005", _queue, "one of the QUEUES of the task backend",
                   "Add the queue to the backend's QUEUES, or change the setting."),
    "JOBS_EXPIRE_AFTER": ("J006", is_seconds, "a positive number of seconds",
                          "How long finished files are kept, e.g. 86400 (a day)."),
    "JOBS_HEARTBEAT_INTERVAL": ("J007", is_seconds, "a positive number of seconds",
                                "For example 2: progress and cancels are seen that often."),
    "JOBS_HEARTBEAT_TIMEOUT": ("J008", _heartbeat_timeout,
                               "seconds, more than STREAMEXPORT_JOBS_HEARTBEAT_INTERVAL",
                               "Several intervals (e.g. 120), or running jobs are swept."),
    "JOBS_URL_EXPIRE": ("J009", lambda v: is_integer(v) and v > 0,
                        "a positive integer of seconds", "For example 300."),
    "JOBS_X_ACCEL_REDIRECT": ("J010", lambda v: v is None or (isinstance(v, str)
                                                             and v.startswith("/")),
                              "None or a URL path starting with '/'",
                              'The prefix of an nginx "internal" location, e.g. '
                              '"/protected-exports/".'),
    "JOBS_EMAIL": ("J011", lambda v: isinstance(v, bool), "True or False",
                   "True emails users a link to the job's page when it ends."),
}  # fmt: skip


@register(Tags.compatibility)
def check_jobs_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Check every background-export setting (ids J001 to J011, in order)."""
    errors = []
    for name, (check_id, rule, good, hint) in RULES.items():
        value = getattr(jobs_conf, name)
        if not rule(value):
            errors.append(
                Error(
                    f"STREAMEXPORT_{name} is {value!r}; it must be {good}.",
                    hint=hint,
                    id=f"django_streamexport.{check_id}",
                )
            )
    return errors
