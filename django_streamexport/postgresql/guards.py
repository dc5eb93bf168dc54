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
    "session_timeout",
    "statement_timeout_error",
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


def session_timeout(connection: BaseDatabaseWrapper, name: str) -> float | None:
    """Return the session's value of the timeout setting ``name`` in seconds (``None``: off).

    ``name`` is ``"statement_timeout"`` or ``"idle_in_transaction_session_timeout"``
    (both in milliseconds in ``pg_settings``).  One round trip; for a reader that holds a
    bound itself (:class:`IdleWatch`) when the export sets no timeout of its own and keeps
    the server's.  ``None`` on databases other than PostgreSQL.
    """
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT setting::bigint FROM pg_settings WHERE name = %s", [name])
        row = cursor.fetchone()
    return row[0] / 1000 if row and row[0] else None


def session_idle_timeout(connection: BaseDatabaseWrapper) -> float | None:
    """Return the session's ``idle_in_transaction_session_timeout`` in seconds (``None``: off).

    :func:`session_timeout` of that setting.
    """
    return session_timeout(connection, "idle_in_transaction_session_timeout")


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

    ``busy_seconds`` and ``cancel`` bound the other side: a reader whose one statement runs
    for the whole export (``COPY``) cannot let ``statement_timeout`` bound it, so the watch
    calls ``cancel()`` (psycopg 3: ``Connection.cancel()``, safe from any thread; the
    statement then fails with SQLSTATE 57014) once the reader has been present, waiting
    for the database, for ``busy_seconds`` in one stretch; ``cancelled`` is then how long.
    That is the bound a cursor export's ``statement_timeout`` puts on each ``FETCH``.

    Use as a context manager: leaving it (or :meth:`stop`) stops the watcher.  With no
    bound (``seconds`` and ``busy_seconds`` ``None`` or 0) it does nothing and starts no
    watcher.
    """

    def __init__(
        self,
        seconds: float | None,
        end_session: Callable[[], None],
        error: Callable[[float], BaseException],
        *,
        busy_seconds: float | None = None,
        cancel: Callable[[], None] | None = None,
    ) -> None:
        self.seconds = float(seconds or 0)
        self.end_session = end_session
        self.error = error
        self.busy_seconds = float(busy_seconds or 0) if cancel is not None else 0.0
        self.cancel = cancel
        #: Seconds the consumer had been away when the watch ended the session, else None.
        self.expired: float | None = None
        #: Seconds the reader had waited when the watch cancelled its statement, else None.
        self.cancelled: float | None = None
        self._away = False  # the consumer has the rows (between away() and back())
        self._since = time.monotonic()  # when _away last changed
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def __enter__(self) -> IdleWatch:
        self._since = time.monotonic()
        if self.seconds > 0 or self.busy_seconds > 0:
            threading.Thread(target=self._watch, name="streamexport-idle", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the watcher (idempotent); it wakes and returns, nothing waits for it."""
        self._stopped.set()

    def away(self) -> None:
        """The consumer takes the rows: the session may wait at most ``seconds`` from now."""
        self._since = time.monotonic()
        self._away = True

    def back(self) -> None:
        """The consumer asks for rows again; raise ``error()`` if the watch ended the session."""
        with self._lock:
            self._away = False
            self._since = time.monotonic()
            if self.expired is not None:
                raise self.error(self.expired)

    def _watch(self) -> None:
        # Sleeps until the bound of the current stretch (away or present) would pass; a
        # stretch without a bound sleeps the other bound's length, and any later stretch
        # ends no sooner than that, so no bound is missed.
        delay = min(b for b in (self.seconds, self.busy_seconds) if b > 0)
        cancelled_since: float | None = None
        while not self._stopped.wait(delay):
            with self._lock:
                away, since = self._away, self._since
                elapsed = time.monotonic() - since
                bound = self.seconds if away else self.busy_seconds
                if not bound:
                    delay = self.busy_seconds if away else self.seconds
                    continue
                if elapsed < bound:
                    delay = bound - elapsed
                    continue
                if away:
                    self.expired = elapsed
                    try:
                        self.end_session()
                    except Exception as exc:  # back() raises the reader's error all the same
                        logger.debug("Ending an idle export's session failed: %s", exc)
                    return
                delay = self.seconds or self.busy_seconds
                if cancelled_since == since:
                    continue  # cancelled once for this wait
                cancelled_since = since
                self.cancelled = elapsed
                try:
                    self.cancel()  # type: ignore[misc]
                except Exception as exc:  # the statement runs on; the export's own bound
                    logger.debug("Cancelling an export's statement failed: %s", exc)


def idle_timeout_error(seconds: float) -> Exception:
    """Return the error of a session :class:`IdleWatch` ended, as PostgreSQL's would be.

    psycopg 3's error for SQLSTATE 25P03 (the readers that need a watch run on psycopg 3
    only), so the client is told ``idle_timeout`` whichever side ended the session.
    """
    return _postgresql_error(
        "25P03",
        "terminating connection due to idle-in-transaction timeout"
        f" (the export's reader was not asked for rows for {seconds:.1f} s)",
    )


def statement_timeout_error(seconds: float) -> Exception:
    """Return the error of a statement :class:`IdleWatch` cancelled, as a statement timeout.

    psycopg 3's ``QueryCanceled`` (SQLSTATE 57014, what PostgreSQL's ``statement_timeout``
    raises), so the client is told ``statement_timeout`` on every path.
    """
    return _postgresql_error(
        "57014",
        "canceling statement due to statement timeout"
        f" (the export waited {seconds:.1f} s for the next rows)",
    )


def _postgresql_error(code: str, message: str) -> Exception:
    """Return psycopg 3's error class for SQLSTATE ``code`` with ``message``.

    Without psycopg 3 (psycopg2 only), Django's ``OperationalError`` with the message,
    which is PostgreSQL's own wording, as psycopg2 reports a closed session.
    """
    try:
        from psycopg import errors
    except ImportError:
        from django.db import OperationalError

        return OperationalError(message)
    return errors.lookup(code)(message)
