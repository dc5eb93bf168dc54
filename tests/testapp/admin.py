"""An admin with streaming exports for the test models (tests/test_admin.py)."""

from django.contrib import admin

from django_streamexport.admin import ExportModelAdmin
from tests.testapp.models import Record
from tests.testapp.views import RecordingStream


@admin.register(Record)
class RecordAdmin(ExportModelAdmin):
    list_display = (
        "title",
        "status",
        "count",
        "author__name",
        "created",
    )
    list_filter = (
        "status",
        "flag",
    )
    search_fields = ("title",)
    date_hierarchy = "created"
    # "body" and "data" are deliberately not exportable.
    export_fields = (
        "id",
        "title",
        "status",
        "count",
        "amount",
        "created",
        "author__name",
        "author__country__name",
    )


class RecordingRecordAdmin(RecordAdmin):
    """``RecordAdmin`` whose exports keep their streams (``RecordingStream.built``).

    Served on its own admin site by tests/testapp/urls.py.
    """

    export_stream_class = RecordingStream


class KeysetRecordAdmin(RecordingRecordAdmin):
    """``RecordAdmin`` reading its exports in keyset pages (tests/testapp/urls.py)."""

    export_mode = "keyset"


class ListDisplayRecordAdmin(ExportModelAdmin):
    """An export admin without ``export_fields``: it exports what ``list_display`` shows.

    Served on its own admin site by tests/testapp/urls.py.
    """

    list_display = ("__str__", "title", "status", "author", "count", "created")
