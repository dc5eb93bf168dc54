"""The reader interface: how one export's rows come out of the database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from django_streamexport.postgresql.guards import apply_guards, session_idle_timeout

if TYPE_CHECKING:
    from django_streamexport.plan import ExportPlan

__all__ = ["FIRST_BATCH_ROWS", "Reader"]

#: Rows in the first fetch (and the first rendered slice): small, so the first data row
#: leaves at once instead of after a whole ``chunk_size`` fetch.
FIRST_BATCH_ROWS = 16


class Reader:
    """Read the rows of one export; made by :func:`~django_streamexport.readers.choose_reader`.

    A row reader's :meth:`read` yields batches: sequences of row tuples, one value per
    export column in order, as the format renders them (``text_cells``: each value is
    already spelled by PostgreSQL: CSV's text, XLSX's cell XML for some columns).  A reader
    with ``renders = True`` (COPY) yields ``(data, rows)`` pairs instead: ``bytes`` of
    the format's body and the number of rows they hold.

    ``read()`` runs inside the export's stream, which closes the generator early on a
    client disconnect or an error: it must release what it holds (cursor, transaction)
    in ``finally``.  ``reason`` says why this reader was chosen (logged at DEBUG, kept
    on the stream).  Subclass one of the readers to change how rows are read and return
    it from ``ExportStream.get_reader()`` (docs/pipeline.md, "One pipeline").
    """

    #: A short name for log lines ("cursor", "prefetching cursor", "keyset", "copy").
    name: ClassVar[str] = ""
    #: ``read()`` yields the format's bytes and row counts instead of rows.
    renders: ClassVar[bool] = False

    def __init__(self, plan: ExportPlan, *, reason: str = "") -> None:
        self.plan = plan
        self.reason = reason
        #: Values arrive as the cells' text (PostgreSQL spelled them as the format would).
        self.text_cells = False
        #: A ``renders`` reader that holds ``plan.max_rows`` itself sets this once it has
        #: yielded exactly ``max_rows`` rows and found one more; the stream then fails with
        #: ``row_limit`` as it does for row readers.
        self.over_limit = False

    def apply_guards(self, connection: Any) -> None:
        """Set the plan's timeouts on ``connection``; call inside the export's transaction."""
        apply_guards(
            connection,
            statement_timeout=self.plan.statement_timeout,
            idle_in_transaction_timeout=self.plan.idle_in_transaction_timeout,
        )

    def idle_bound(self, connection: Any) -> float | None:
        """Return the seconds the consumer may keep the transaction waiting (``None``: no bound).

        The plan's ``idle_in_transaction_timeout``; without one, the session's
        ``idle_in_transaction_session_timeout`` (one round trip), which the export keeps.
        For readers that hold the bound themselves
        (:class:`~django_streamexport.postgresql.guards.IdleWatch`) because a statement runs
        while the consumer is away; call inside the export's transaction, after the guards.
        """
        return self.plan.idle_in_transaction_timeout or session_idle_timeout(connection)

    def read(self) -> Iterator[Any]:
        """Yield the export's rows in batches (or, with ``renders``, body bytes and counts)."""
        raise NotImplementedError("Reader subclasses implement read().")

    def first_select(self) -> tuple[str, Sequence[Any]] | None:
        """Return the SQL and parameters of the first query :meth:`read` runs, or ``None``.

        The query holding every value of the filters will do (the built-in readers return
        the export's query, without the wrapping of database formatting or COPY).
        Checked before the response starts
        (:func:`~django_streamexport.responses.check_query`): the driver adapts the
        parameters and the database plans the query, so what they refuse is a 400, not a
        failure after the 200.  ``None`` (the default) when there is no such query or
        nothing to check.
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}: {self.reason}>"
