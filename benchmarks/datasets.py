"""The data sets a benchmark exports: a queryset, its export fields and their header labels.

``synthetic-<rows>`` is the 10-column table ``bench_synthetic_<rows>``; ``text-<rows>`` the
same columns with real-world text (``bench_text_<rows>``: quotes, delimiters, line breaks,
accents, CJK, emoji, empty strings, long notes, NULLs); ``flights`` is the example project's
``Flight`` table (``loadflights --multiply N``), with a join to the airline.
"""

from __future__ import annotations

from django.db import models

SYNTHETIC_FIELDS = [
    "id", "quantity", "amount", "ratio", "code", "label", "note", "active", "created", "day",
]  # fmt: skip
FLIGHT_FIELDS = [
    "id", "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "arr_delay", "carrier", "carrier__name", "flight_number", "tailnum", "origin", "dest_faa",
    "air_time", "distance", "time_hour",
]  # fmt: skip


def dataset(name: str) -> tuple[models.QuerySet, list[str]]:
    """Return (queryset, export fields) for data set ``name``; raise KeyError if unknown."""
    if name == "flights":
        from flights.models import Flight

        return Flight.objects.order_by(), FLIGHT_FIELDS
    if name.startswith("synthetic-"):
        from benchmarks.benchapp.models import SYNTHETIC_MODELS

        model = SYNTHETIC_MODELS[int(name.split("-", 1)[1])]
        return model.objects.all(), SYNTHETIC_FIELDS
    if name.startswith("text-"):
        from benchmarks.benchapp.models import TEXT_MODELS

        model = TEXT_MODELS[int(name.split("-", 1)[1])]
        return model.objects.all(), SYNTHETIC_FIELDS
    raise KeyError(name)
