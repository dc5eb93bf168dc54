"""Admin for the nycflights13 models, kept fast on 336,776 flights, with streaming exports.

What keeps the flight changelist fast: no full-table count (show_full_result_count), the
joins for the displayed relations in the same query (list_select_related), autocomplete
widgets instead of <select>s with thousands of options, filters whose choices need no scan
of the flights, and the (time_hour, id) index behind the default ordering and
date_hierarchy. One cost remains: date_hierarchy's list of months is a DISTINCT over every
flight's time_hour in New York time, about 0.2 s on PostgreSQL but seconds on SQLite, which
converts time zones in Python, row by row.
"""

from django.contrib import admin

from django_streamexport.admin import ExportAdminMixin
from flights.models import Airline, Airport, Flight, Plane, Weather


@admin.register(Airline)
class AirlineAdmin(admin.ModelAdmin):
    list_display = ("carrier", "name")
    search_fields = ("carrier", "name")


@admin.register(Airport)
class AirportAdmin(admin.ModelAdmin):
    list_display = ("faa", "name", "tzone", "dst", "alt", "lat", "lon")
    list_filter = ("dst", "tz")
    search_fields = ("faa", "name")


@admin.register(Plane)
class PlaneAdmin(admin.ModelAdmin):
    list_display = ("tailnum", "manufacturer", "model", "year", "engines", "seats", "engine")
    list_filter = ("type", "engine", "engines")
    search_fields = ("tailnum", "manufacturer", "model")


@admin.register(Flight)
class FlightAdmin(ExportAdminMixin, admin.ModelAdmin):
    list_display = (
        "time_hour",
        "carrier",
        "flight_number",
        "origin",
        "dest_faa",
        "tailnum",
        "dep_delay",
        "arr_delay",
        "distance",
    )
    list_select_related = ("carrier", "origin")
    list_filter = (
        "carrier",
        "origin",  # three airports: Flight.origin's limit_choices_to
        "month",  # choices, so no SELECT DISTINCT over the flights
    )
    # Exact matches only: a LIKE '%term%' over every flight is a full scan per keystroke.
    search_fields = ("=tailnum", "=dest_faa", "flight_number__exact")
    date_hierarchy = "time_hour"
    autocomplete_fields = ("carrier", "plane", "origin", "dest")
    # "1,234 results (336,776 total)" costs a COUNT(*) of the whole table on every page.
    show_full_result_count = False
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


@admin.register(Weather)
class WeatherAdmin(admin.ModelAdmin):
    list_display = (
        "origin",
        "time_hour",
        "temp",
        "dewp",
        "humid",
        "wind_dir",
        "wind_speed",
        "precip",
        "pressure",
        "visib",
    )
    list_select_related = ("origin",)
    list_filter = ("origin",)
    date_hierarchy = "time_hour"
    autocomplete_fields = ("origin",)
    show_full_result_count = False
