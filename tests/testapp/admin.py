"""An admin with streaming exports for the test models (tests/test_admin.py)."""

from django.contrib import admin

from django_streamexport.admin import ExportModelAdmin
from tests.testapp.models import Record


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
