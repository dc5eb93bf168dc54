"""The flights admin, with streaming CSV/NDJSON exports (django_streamexport.admin)."""

from django.contrib import admin

from django_streamexport.admin import ExportAdminMixin
from flights.models import Flight


@admin.register(Flight)
class FlightAdmin(ExportAdminMixin, admin.ModelAdmin):
    list_display = (
        "time_hour",
        "carrier",
        "flight_number",
        "origin",
        "dest_faa",
        "dep_delay",
        "arr_delay",
    )
    # Origins: only the three NYC airports that have flights, not all 1,458 airports.
    list_filter = (("origin", admin.RelatedOnlyFieldListFilter), "carrier", "month")
    search_fields = (
        "tailnum",
        "dest_faa",
    )
    date_hierarchy = "time_hour"
    # 336,776 rows: counting them all again for "N total" on every page is wasted work.
    show_full_result_count = False
    list_select_related = (
        "carrier",
        "origin",
    )
    # What staff may export: the flight as filed, with the airline's and airports' names.
    export_fields = (
        "id",
        "time_hour",
        "carrier",
        "carrier__name",
        "flight_number",
        "tailnum",
        "origin",
        "origin__name",
        "dest_faa",
        "dest__name",
        "dep_time",
        "sched_dep_time",
        "dep_delay",
        "arr_time",
        "sched_arr_time",
        "arr_delay",
        "air_time",
        "distance",
    )
