from django_streamexport.columns import Column
from django_streamexport.views import StreamingExportView

from .models import Record

ALL_FIELDS = [
    "id",
    "title",
    "body",
    Column("status", choices_display=True),
    "count",
    "amount",
    "ratio",
    "flag",
    "created",
    "day",
    "at",
    "took",
    "key",
    "data",
    "author__name",
    "author__country__name",
]


class RecordExport(StreamingExportView):
    model = Record
    export_fields = ALL_FIELDS
    filename = "records"
