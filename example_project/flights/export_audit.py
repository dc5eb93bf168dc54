"""Log every export: who exported what, how much, and how it ended.

Connected by ``FlightsConfig.ready()`` (``from flights import export_audit``).
Projects that must keep an audit trail can store the same keyword arguments
in a model instead; see django_streamexport.signals for what they carry.
"""

import logging

from django.dispatch import receiver

from django_streamexport.signals import export_finished, export_started

logger = logging.getLogger("flights.exports")


def _who(user):
    if user is None:
        return "-"
    return user.get_username() if user.is_authenticated else "anonymous"


@receiver(export_started, dispatch_uid="flights.export_audit.started")
def log_export_started(sender, *, export_id, user, model, format, fields, **kwargs):
    logger.info(
        "export %s started: user=%s model=%s format=%s fields=%s",
        export_id,
        _who(user),
        model._meta.label,
        format,
        ",".join(fields),
    )


@receiver(export_finished, dispatch_uid="flights.export_audit.finished")
def log_export_finished(
    sender, *, export_id, user, model, format, rows, bytes, seconds, outcome, error_code, **kwargs
):
    logger.info(
        "export %s %s: user=%s model=%s format=%s rows=%d bytes=%d seconds=%.3f error=%s",
        export_id,
        outcome,
        _who(user),
        model._meta.label,
        format,
        rows,
        bytes,
        seconds,
        error_code or "-",
    )
