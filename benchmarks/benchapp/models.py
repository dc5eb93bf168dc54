"""The synthetic 10-column tables, one per size; ``run.py seed`` creates and fills them in SQL.

Unmanaged: the tables are created with ``CREATE TABLE ... AS SELECT ... FROM generate_series``
(seconds for 10M rows), not by migrations, and only the sizes asked for exist.
"""

import os

from django.db import models

#: Row counts of the synthetic tables (``bench_synthetic_<rows>``) the models cover;
#: ``run.py`` passes the sizes it measures in ``STREAMEXPORT_BENCH_SIZES``.
SIZES = [
    int(size)
    for size in os.environ.get("STREAMEXPORT_BENCH_SIZES", "100000,1000000,10000000").split(",")
    if size.strip()
]


class SyntheticRow(models.Model):
    """Ten columns of the common kinds: integers, a float, a decimal, text, a flag, time stamps."""

    id = models.BigIntegerField(primary_key=True)
    quantity = models.IntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    ratio = models.FloatField(null=True)
    code = models.CharField(max_length=8)
    label = models.CharField(max_length=64)
    note = models.TextField(null=True)  # noqa: DJ001 (NULLs are part of the test data)
    active = models.BooleanField()
    created = models.DateTimeField()
    day = models.DateField()

    class Meta:
        abstract = True


def _table_model(rows: int) -> type[models.Model]:
    meta = type("Meta", (), {"managed": False, "db_table": f"bench_synthetic_{rows}"})
    return type(f"Synthetic{rows}", (SyntheticRow,), {"__module__": __name__, "Meta": meta})


SYNTHETIC_MODELS = {rows: _table_model(rows) for rows in SIZES}


def _text_model(rows: int) -> type[models.Model]:
    meta = type("Meta", (), {"managed": False, "db_table": f"bench_text_{rows}"})
    return type(f"Text{rows}", (SyntheticRow,), {"__module__": __name__, "Meta": meta})


#: The text-heavy tables (``bench_text_<rows>``): the same ten columns, with the text real
#: data holds in ``code``, ``label`` and ``note`` (see run.py ``TEXT_SQL``).
TEXT_MODELS = {rows: _text_model(rows) for rows in SIZES}
