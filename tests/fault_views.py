"""Export views that fail on purpose, for the fault and load tests (tests/server_urls.py)."""

from django_streamexport.views import StreamingExportView
from tests.testapp.models import Record

FIELDS = ["id", "title", "body"]


class SlowReadExport(StreamingExportView):
    """Small fetches and chunks and a 1 s idle-in-transaction bound: a slow reader trips it."""

    model = Record
    export_fields = FIELDS
    chunk_size = 20
    buffer_size = 1024
    idle_in_transaction_timeout = 1


class KillableExport(StreamingExportView):
    """Small fetches, so the export is mid-stream while the client pauses."""

    model = Record
    export_fields = FIELDS
    chunk_size = 50
    buffer_size = 4096


class StatementTimeoutExport(StreamingExportView):
    """The first 300 rows come at once; each later row sleeps 50 ms, so a fetch of 100 rows
    runs 5 s, far past the 0.3 s statement timeout."""

    export_fields = FIELDS
    chunk_size = 100
    statement_timeout = 0.3

    def get_queryset(self):
        return Record.objects.extra(
            where=[
                "(testapp_record.id <= (SELECT min(id) + 299 FROM testapp_record)"
                " OR pg_sleep(0.05) IS NOT NULL)"
            ]
        )


class RowLimitExport(StreamingExportView):
    model = Record
    export_fields = FIELDS
    max_rows = 1000


class LoadExport(StreamingExportView):
    """Every 200th row sleeps 0.1 s, so each export lasts about a second and they overlap."""

    export_fields = FIELDS
    chunk_size = 200

    def get_queryset(self):
        return Record.objects.extra(
            where=["(testapp_record.id %% 200 <> 0 OR pg_sleep(0.1) IS NOT NULL)"]
        )


class FirstFetchFailsExport(StreamingExportView):
    """The database plans the query (``EXPLAIN`` passes) and fails on its first row."""

    model = Record
    export_fields = FIELDS

    def get_queryset(self):
        return Record.objects.extra(where=["1 / (testapp_record.id - testapp_record.id) = 1"])


class WideSlowReadExport(StreamingExportView):
    """Wide rows (about 5 KB each) fetched 10,000 at a time, prefetching, with a 1 s idle
    bound: the prefetched ``FETCH`` (about 50 MB) cannot fit in the socket buffers, so while
    the client pauses PostgreSQL blocks writing it (``active``, ``ClientWrite``), where its own
    ``idle_in_transaction_session_timeout`` never applies."""

    model = Record
    export_fields = ["id", "body"]
    chunk_size = 10_000
    idle_in_transaction_timeout = 1
    prefetch = True


class WideSlowCopyExport(StreamingExportView):
    """The same wide rows as CSV through ``COPY``, one statement that blocks writing to a
    paused client just as the prefetched ``FETCH`` does."""

    model = Record
    export_fields = ["id", "body"]
    idle_in_transaction_timeout = 1
    copy_mode = "require"
