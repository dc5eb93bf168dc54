"""Each setting's documented default, and override_settings read at call time."""

from __future__ import annotations

import inspect

import pytest
from django.conf import settings
from django.test import override_settings

from django_streamexport.conf import DEFAULT_FORMATS, Settings, conf

CSV = "django_streamexport.formats.csv.CSVFormat"
NDJSON = "django_streamexport.formats.ndjson.NDJSONFormat"

#: (property, documented default, another valid value)
SETTINGS = [
    ("CHUNK_SIZE", 2000, 500),
    ("BUFFER_SIZE", 65536, 1024),
    ("TIME_SLICE", 0.002, 0.01),
    ("DATABASE", None, "sqlite"),
    ("FORMATS", DEFAULT_FORMATS, [NDJSON]),
    ("CSV_DELIMITER", ",", ";"),
    ("CSV_BOM", False, True),
    ("CSV_ESCAPE_FORMULAS", True, False),
    ("COPY_MODE", True, False),
    ("DATABASE_FORMATTING", True, False),
    ("X_ACCEL_BUFFERING", True, False),
    ("ADMIN_EXPORT_PERMISSION", "view", "export"),
    ("NDJSON_END_RECORD", False, True),
    ("STATEMENT_TIMEOUT", 300, 12.5),
    ("IDLE_IN_TRANSACTION_TIMEOUT", 120, 0),
    ("MAX_ROWS", None, 1000),
    ("MAX_CONCURRENT_EXPORTS", None, 4),
    ("MAX_CONCURRENT_EXPORTS_PER_USER", None, 1),
    ("RETRY_AFTER", 10, 30),
    ("XLSX_TIME_ZONE", None, "Europe/Paris"),
    ("XLSX_COMPRESS_LEVEL", 1, 6),
    ("PARQUET_ROW_GROUP_ROWS", 65536, 1000),
    ("PARQUET_ROW_GROUP_BYTES", 2 * 1024 * 1024, 64 * 1024),
    ("TIME_ZONE", None, "current"),
]

NAMES = [name for name, _default, _example in SETTINGS]


def test_table_covers_every_property():
    properties = [name for name, value in vars(Settings).items() if isinstance(value, property)]
    assert sorted(properties) == sorted(NAMES)


@pytest.mark.parametrize(("name", "default", "example"), SETTINGS, ids=NAMES)
def test_default_when_unset(name, default, example):
    with override_settings():
        if hasattr(settings, f"STREAMEXPORT_{name}"):
            delattr(settings, f"STREAMEXPORT_{name}")
        assert not hasattr(settings, f"STREAMEXPORT_{name}")
        value = getattr(conf, name)
    assert value == default
    assert type(value) is type(default)


@pytest.mark.parametrize(("name", "default", "example"), SETTINGS, ids=NAMES)
def test_follows_override_settings(name, default, example):
    assert example != default
    before = getattr(conf, name)
    with override_settings(**{f"STREAMEXPORT_{name}": example}):
        assert getattr(conf, name) == example
    assert getattr(conf, name) == before


@pytest.mark.parametrize(("name", "default", "example"), SETTINGS, ids=NAMES)
def test_docstring_states_the_default(name, default, example):
    """The settings reference (docs/reference/settings.rst) is generated from these
    docstrings: the text must name the default the code returns, with the word "default"."""
    doc = inspect.getdoc(vars(Settings)[name]) or ""
    if isinstance(default, tuple):
        spelled = ["DEFAULT_FORMATS"]
    elif isinstance(default, str):
        spelled = [f'``"{default}"``']
    else:
        spelled = [f"Default {default!r}", f"Default ``{default!r}``"]
    assert "default" in doc.lower()
    assert any(text in doc for text in spelled), f"{name}: {doc.splitlines()[0]}"
