"""Signals sent around each export, for auditing and metrics.

``sender`` is the stream's class (:class:`~django_streamexport.streaming.ExportStream`
or a subclass).  Both signals carry:

* ``export_id`` (``str``): the id in log lines and the ``X-Export-Id`` header;
* ``user``: the requesting user (``AnonymousUser`` for anonymous requests), or
  ``None`` when the export was not made for a request (management command);
* ``model``: the exported model class;
* ``format`` (``str``): the format's name (``"csv"``, ``"ndjson"``);
* ``fields`` (``list[str]``): the exported column names, in order.

:data:`export_finished` adds ``rows`` (``int``, data rows sent), ``bytes``
(``int``, body bytes produced), ``seconds`` (``float``, wall time),
``outcome`` (``"complete"``, ``"failed"``, ``"disconnected"`` or
``"interrupted"``: the server stopped it, e.g. a worker restart) and
``error_code`` (a :mod:`~django_streamexport.failures` code, or ``None``).

Both are sent from inside the stream, when the server iterates it: a ``HEAD``
request or a refused export sends neither.  :data:`export_started` is sent
with ``send()``, so a receiver that raises stops the export before its first
byte (an audit trail may fail closed); :data:`export_finished` with
``send_robust()``, so a failing receiver is logged and cannot mask the
export's own outcome.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("django_streamexport")

#: Sent when an export's response starts (see the module's docstring for the arguments).
export_started = Signal()
#: Sent once when an export ends, however it ends (see the module's docstring).
export_finished = Signal()


def send_export_finished(sender: type, **kwargs: Any) -> None:
    """Send :data:`export_finished` robustly: log a failing receiver, never raise.

    A receiver's error must not mask the export's own outcome (``send_robust()``).
    """
    for receiver, result in export_finished.send_robust(sender=sender, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "Export %s: export_finished receiver %r failed.",
                kwargs.get("export_id"),
                receiver,
                exc_info=result,
            )
