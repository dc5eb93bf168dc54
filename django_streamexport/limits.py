"""Admission control: how many exports may stream at once in this process.

Each streaming export pins one database connection and one worker slot (a
greenlet, a thread) from its first row to its last byte: Django returns the
connection on ``request_finished`` (``close_old_connections`` in
``django/db/__init__.py``), which ``HttpResponseBase.close()`` sends
(``django/http/response.py``), and the WSGI server calls ``close()`` only
after the last chunk (PEP 3333).  Connections are per thread, so under gevent
each greenlet opens its own (Django docs, ``docs/ref/databases.txt``,
"Persistent connections").  Past ``STREAMEXPORT_MAX_CONCURRENT_EXPORTS`` (and, for
authenticated users, ``STREAMEXPORT_MAX_CONCURRENT_EXPORTS_PER_USER``) a
request is refused with 429 and ``Retry-After`` *before* any streaming
starts, so exports cannot starve the connections that ordinary pages need.

The counters are per process: with N worker processes the cap for the site is
N times the setting.  They are guarded by a lock whose critical section never
blocks or yields, so they are exact under threads and under gevent (where
``threading`` is monkey-patched and every request is a greenlet of one
thread).  A slot is released exactly once: when the stream ends, fails or is
closed (client disconnect, ``HEAD``), or, as a last resort, when the stream
is garbage-collected.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from django.utils.translation import gettext as _

from django_streamexport.exceptions import TooManyExports


class Slot:
    """One admitted export; :meth:`release` gives its place back (idempotent)."""

    def __init__(self, slots: ExportSlots, user_key: Hashable | None) -> None:
        self._slots = slots
        self.user_key = user_key
        self.released = False

    def release(self) -> None:
        """Give the place back; later calls do nothing."""
        self._slots._release(self)


class ExportSlots:
    """Count the exports running in this process, overall and per user."""

    def __init__(self) -> None:
        # Reentrant: a garbage-collection finalizer may release a slot while
        # this thread is inside acquire().
        self._lock = threading.RLock()
        self.active = 0
        self.by_user: dict[Hashable, int] = {}

    def acquire(
        self,
        user_key: Hashable | None = None,
        *,
        limit: int | None,
        per_user_limit: int | None,
        retry_after: int,
    ) -> Slot:
        """Admit one export and return its :class:`Slot`.

        ``limit`` caps exports in this process, ``per_user_limit`` those with
        the same ``user_key`` (``None`` for anonymous: not counted per user);
        ``None`` or 0 means no cap.  Raises
        :class:`~django_streamexport.exceptions.TooManyExports` (429) when a
        cap is reached, with ``retry_after`` seconds.
        """
        with self._lock:
            if limit and self.active >= limit:
                raise TooManyExports(
                    _(
                        "Too many exports are running (%(limit)d at most); try again in "
                        "%(seconds)d seconds."
                    )
                    % {"limit": limit, "seconds": retry_after},
                    retry_after=retry_after,
                )
            if user_key is not None and per_user_limit:
                if self.by_user.get(user_key, 0) >= per_user_limit:
                    raise TooManyExports(
                        _(
                            "You already have %(count)d exports running; wait for one to "
                            "finish and try again."
                        )
                        % {"count": per_user_limit},
                        retry_after=retry_after,
                    )
            self.active += 1
            if user_key is not None:
                self.by_user[user_key] = self.by_user.get(user_key, 0) + 1
            return Slot(self, user_key)

    def _release(self, slot: Slot) -> None:
        with self._lock:
            if slot.released:
                return
            slot.released = True
            self.active -= 1
            if slot.user_key is not None:
                remaining = self.by_user.get(slot.user_key, 1) - 1
                if remaining > 0:
                    self.by_user[slot.user_key] = remaining
                else:
                    self.by_user.pop(slot.user_key, None)


#: The process-wide counters the views use.
export_slots = ExportSlots()
