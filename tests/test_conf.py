"""Each setting's documented default, and override_settings read at call time."""

from __future__ import annotations

import re
from pathlib import Path

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
def test_readme_documents_type_and_default(name, default, example):
    """The README's settings reference has a heading per setting giving its type and default."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    reference = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    sections = dict(re.findall(r"\n### `STREAMEXPORT_(\w+)`\n(.*?)(?=\n### |\Z)", reference, re.S))
    assert name in sections
    text = " ".join(sections[name].split())
    if isinstance(default, str):
        spelled = f'"{default}"'
    elif isinstance(default, tuple):
        spelled = "[" + ", ".join(f'"{item}"' for item in default) + "]"
    else:
        spelled = repr(default)
    assert re.match(r"`[^`]+`", text)  # the type first
    assert f"default `{spelled}`" in text
