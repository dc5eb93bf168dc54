from typing import ClassVar

from django.contrib.auth.mixins import LoginRequiredMixin

from django_streamexport.columns import Column
from django_streamexport.streaming import ExportStream
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
#: The header row of ALL_FIELDS: each field's verbose name, capitalized.
ALL_LABELS = [
    "ID",
    "Record title",
    "Body",
    "Status",
    "Count",
    "Amount",
    "Ratio",
    "Flag",
    "Created",
    "Day",
    "At",
    "Took",
    "Key",
    "Data",
    "Author name",
    "Author country country name",
]


class RecordExport(StreamingExportView):
    model = Record
    export_fields = ALL_FIELDS
    filename = "records"


class BackgroundRecordExport(LoginRequiredMixin, RecordExport):
    """``RecordExport`` as a background job (``django_streamexport.jobs``)."""

    background = True


class RecordingStream(ExportStream):
    """An ``ExportStream`` that keeps every instance in ``built``: tests read its plan and reader.

    Tests clear ``built`` (the list keeps the streams alive, so their admission slots are
    given back by closing the responses, not by garbage collection).
    """

    built: ClassVar[list[ExportStream]] = []

    def __init__(self, plan):
        super().__init__(plan)
        self.built.append(self)
