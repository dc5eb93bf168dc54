"""Database guards set for the length of one export's transaction (PostgreSQL).

Both are ``SET LOCAL``, sent in one round trip, so they end
with the export's transaction and never leak into the next use of a
persistent or pooled connection.  Other databases have no such settings and
are left alone.

* ``statement_timeout``: with the ``WITHOUT HOLD`` cursor each ``FETCH`` is
  one statement, so the limit applies *per fetch* (the first fetch includes
  sorting), not to the whole export (PostgreSQL docs, "Client Connection
  Defaults", ``statement_timeout``).  A cancelled fetch raises SQLSTATE 57014.
* ``idle_in_transaction_session_timeout``: the transaction is idle while the
  server waits for the client to take the bytes already rendered; a client
  so slow that no ``FETCH`` is sent for this long gets its session ended by
  PostgreSQL (SQLSTATE 25P03, ``FATAL``), and the next fetch fails
  (PostgreSQL docs, "Client Connection Defaults",
  ``idle_in_transaction_session_timeout``; ``tests/test_faults.py``).

That timeout applies only to a session that is *idle* in its transaction.  A reader that
keeps a statement running while the export's consumer is away (the prefetched ``FETCH``,
``COPY``) leaves the backend ``active``, blocked writing to a socket nobody reads (wait
event ``ClientWrite``) once the result outgrows the socket buffers; PostgreSQL ends such a
session neither for being idle nor for ``statement_timeout`` (a cancel is not served while
the backend waits to write to its client: ``ProcessClientWriteInterrupt()`` in
``src/backend/tcop/postgres.c`` serves only a termination).  Those readers hold the bound
themselves with :class:`IdleWatch`: when the consumer has been away longer than the timeout,
the watch closes the export's connection, and the backend, its write refused, ends the
session and rolls the transaction back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "MAX_TIMEOUT_MS",
    "IdleWatch",
    "apply_guards",
    "idle_timeout_error",
    "milliseconds",
    "session_idle_timeout",
]

logger = logging.getLogger("django_streamexport")

#: The largest ``statement_timeout`` and ``idle_in_transaction_session_timeout`` PostgreSQL
#: accepts, in milliseconds (``pg_settings.max_val``: INT_MAX).
MAX_TIMEOUT_MS = 2_147_483_647


def milliseconds(seconds: float) -> int:
    """Return ``seconds`` as whole milliseconds, at least 1 (PostgreSQL's unit for both)."""
    return max(1, round(float(seconds) * 1000))


def apply_guards(
    connection: BaseDatabaseWrapper,
    *,
    statement_timeout: float | None,
    idle_in_transaction_timeout: float | None,
) -> None:
    """Set the export's timeouts (seconds; ``None`` or 0 keeps the server's) on ``connection``.

    Call inside the export's transaction (``SET LOCAL`` outside one has no
    effect).  Does nothing on databases other than PostgreSQL.
    """
    if connection.vendor != "postgresql":
        return
    values = []
    if statement_timeout:
        values.append(("statement_timeout", milliseconds(statement_timeout)))
    if idle_in_transaction_timeout:
        values.append(
            ("idle_in_transaction_session_timeout", milliseconds(idle_in_transaction_timeout))
        )
    if not values:
        return
    # Integers formatted by us, so no parameters: SET takes none in the extended
    # protocol, and without parameters both drivers accept two statements at once.
    sql = "; ".join(f"SET LOCAL {name} = {value:d}" for name, value in values)
    with connection.cursor() as cursor:
        cursor.execute(sql)


def session_idle_timeout(connection: BaseDatabaseWrapper) -> float | None:
    """Return the session's ``idle_in_transaction_session_timeout`` in seconds (``None``: off).

    One round trip; for a reader that holds the bound itself (:class:`IdleWatch`) when the
    export sets no timeout of its own and keeps the server's.  ``None`` on databases other
    than PostgreSQL.
    """
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT setting::bigint FROM pg_settings"
            " WHERE name = 'idle_in_transaction_session_timeout'"
        )
        row = cursor.fetchone()
    return row[0] / 1000 if row and row[0] else None


class IdleWatch:
    """End the export's session when its consumer stays away longer than ``seconds``.

    A reader calls :meth:`away` just before it yields and :meth:`back` as soon as it is
    resumed; between the two the consumer renders the rows and hands chunks to the server,
    which waits while the client does not read.  A watcher (a daemon thread; a greenlet
    once gevent has patched ``threading``) wakes when the consumer has been away for
    ``seconds`` and calls ``end_session()``, which must make PostgreSQL end the session
    from any thread without waiting (psycopg 3: ``PGconn.finish()``: the backend, blocked
    writing, meets a reset connection and rolls back).  It is never called while the
    reader is between :meth:`back` and :meth:`away`, where it may be using the connection.
    :meth:`back` then raises ``error(seconds_away)``, the reader's idle-timeout error.

    Use as a context manager: leaving it stops the watcher.  With ``seconds`` ``None`` or
    0 (no bound) it does nothing and starts no watcher.
    """

    def __init__(
        self,
        seconds: float | None,
        end_session: Callable[[], None],
        error: Callable[[float], BaseException],
    ) -> None:
        self.seconds = float(seconds or 0)
        self.end_session = end_session
        self.error = error
        #: Seconds the consumer had been away when the watch ended the session, else None.
        self.expired: float | None = None
        self._left: float | None = None  # monotonic time the consumer left; None: present
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def __enter__(self) -> IdleWatch:
        if self.seconds > 0:
            threading.Thread(target=self._watch, name="streamexport-idle", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()  # the watcher wakes and returns; nothing waits for it

    def away(self) -> None:
        """The consumer takes the rows: the session may wait at most ``seconds`` from now."""
        self._left = time.monotonic()

    def back(self) -> None:
        """The consumer asks for rows again; raise ``error()`` if the watch ended the session."""
        with self._lock:
            self._left = None
            if self.expired is not None:
                raise self.error(self.expired)

    def _watch(self) -> None:
        delay = self.seconds
        while not self._stopped.wait(delay):
            with self._lock:
                left = self._left
                away = 0.0 if left is None else time.monotonic() - left
                if away < self.seconds:
                    delay = self.seconds - away
                    continue
                self.expired = away
                try:
                    self.end_session()
                except Exception as exc:  # back() raises the reader's error all the same
                    logger.debug("Ending an idle export's session failed: %s", exc)
                return


def idle_timeout_error(seconds: float) -> Exception:
    """Return the error of a session :class:`IdleWatch` ended, as PostgreSQL's would be.

    psycopg 3's error for SQLSTATE 25P03 (the readers that need a watch run on psycopg 3
    only), so the client is told ``idle_timeout`` whichever side ended the session.
    """
    message = (
        "terminating connection due to idle-in-transaction timeout"
        f" (the export's reader was not asked for rows for {seconds:.1f} s)"
    )
    try:
        from psycopg import errors
    except ImportError:  # psycopg2 only: the message is PostgreSQL's, as psycopg2 reports it
        from django.db import OperationalError

        return OperationalError(message)
    return errors.lookup("25P03")(message)
