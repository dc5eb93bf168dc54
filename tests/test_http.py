"""Download names and Content-Disposition (RFC 6266) for hostile input."""

from __future__ import annotations

import pytest

from django_streamexport.http import ascii_fallback, attachment_header, safe_filename


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("flights", "flights.csv"),
        ("flights.csv", "flights.csv"),
        ("../../etc/passwd", "etc-passwd.csv"),
        ("..\\windows\\system32", "windows-system32.csv"),
        ('quote"d; name', "quote-d- name.csv"),
        ("line\r\nbreak", "line-break.csv"),
        ("nul\x00byte", "nul-byte.csv"),
        (".hidden", "hidden.csv"),
        ("", "export.csv"),
        ("...", "export.csv"),
        ("rapport-é/../x", "rapport-é-..-x.csv"),
        ("x" * 500, "x" * 116 + ".csv"),
    ],
)
def test_safe_filename(name, expected):
    assert safe_filename(name, "csv") == expected


@pytest.mark.parametrize(
    ("filename", "header"),
    [
        ("flights.csv", 'attachment; filename="flights.csv"'),
        (
            "vols-été.csv",
            "attachment; filename=\"vols-ete.csv\"; filename*=UTF-8''vols-%C3%A9t%C3%A9.csv",
        ),
        (
            "🎉 party.ndjson",
            "attachment; filename=\"party.ndjson\"; filename*=UTF-8''%F0%9F%8E%89%20party.ndjson",
        ),
        (
            "航班.csv",
            "attachment; filename=\"export.csv\"; filename*=UTF-8''%E8%88%AA%E7%8F%AD.csv",
        ),
    ],
)
def test_attachment_header(filename, header):
    assert attachment_header(filename) == header


def test_ascii_fallback_is_plain():
    assert ascii_fallback("Ölpreise März 2013.csv") == "Olpreise_Marz_2013.csv"
