"""The admin export in a real browser: headless Chromium, the example project's flights.

Debian's ``chromium`` (installed by ``scripts/install-servers``) driven by Playwright
through ``executable_path``; Playwright's own browser download is never used.  The
server is pytest-django's ``live_server`` (a real HTTP server on 127.0.0.1, over the
PostgreSQL test database) with all 336,776 flights loaded by ``loadflights`` (COPY).
A staff user with only the view permission logs in, filters the changelist, exports the
filtered flights with both actions, picks and reorders columns on the export page, and
exports all flights as CSV, NDJSON and Excel; every download is parsed (the workbook by
python-calamine and by LibreOffice) and compared with the database.

``STREAMEXPORT_SCREENSHOTS=1`` also writes ``docs/admin-export-page{,-dark}.png``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connections
from django.utils.text import capfirst
from flights.admin import FlightAdmin
from flights.models import Flight

from django_streamexport.columns import resolve_columns
from tests.spreadsheets import read_calamine, read_libreoffice
from tests.test_formats_xlsx import (
    assert_same_rows,
    calamine_expected,
    libreoffice_cell,
    libreoffice_read_back,
    read_back,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parent.parent / "docs"
ALL_FLIGHTS = 336_776

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def expected_rows(queryset, fields):
    """Rows as the NDJSON export writes them: datetimes in ISO 8601, the rest as stored."""
    rows = []
    for row in queryset.values_list(*fields).iterator(chunk_size=10_000):
        rows.append([v.isoformat() if hasattr(v, "isoformat") else v for v in row])
    return rows


def as_csv_cells(rows):
    """The same rows as CSV text cells: NULL is an empty cell."""
    return [["" if v is None else str(v) for v in row] for row in rows]


def read_download(download) -> bytes:
    assert download.failure() is None
    return Path(download.path()).read_bytes()


def parse_csv(data: bytes):
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    return rows[0], rows[1:]


def parse_ndjson(data: bytes):
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


@pytest.fixture
def browser_page(monkeypatch):
    """A page in headless Debian Chromium; closed with the browser after the test."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls
    # are synchronous code all the same.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1100, "height": 900}
            )
            page = context.new_page()
            page.set_default_timeout(120_000)
            yield page
            context.close()
        finally:
            browser.close()
            # ORM calls made while Playwright's loop runs get their own connection (asgiref's
            # Local is per context); close it, or it keeps the test database from being dropped.
            connections.close_all()


def test_staff_user_exports_flights_from_the_admin(live_server, browser_page, tmp_path):
    call_command("loadflights", verbosity=0)
    assert Flight.objects.count() == ALL_FLIGHTS
    staff = User.objects.create_user("clerk", password="clerk-pw-123", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_flight"))
    fields = list(FlightAdmin.export_fields)
    ordered = Flight.objects.order_by("time_hour", "id")
    page = browser_page

    # Log in.
    page.goto(f"{live_server.url}/admin/login/?next=/admin/flights/flight/")
    page.fill("#id_username", "clerk")
    page.fill("#id_password", "clerk-pw-123")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/flights/flight/")

    # Filter the changelist with its sidebar: JFK departures in February.
    page.click("#changelist-filter a:has-text('John F Kennedy Intl')")
    page.click("#changelist-filter a:has-text('February')")
    assert "origin__faa__exact=JFK" in page.url and "month__exact=2" in page.url
    filtered = ordered.filter(origin="JFK", month=2)
    assert 5_000 < filtered.count() < 20_000

    # The actions, on every page of the filtered list ("Select all N flights").
    page.check("#action-toggle")
    page.click(".actions .question a")
    for fmt in ("csv", "ndjson"):
        page.select_option("select[name=action]", f"export_as_{fmt}")
        with page.expect_download() as info:
            page.click(".actions button[name=index]")
        download = info.value
        assert download.suggested_filename == f"flights.{fmt}"
        data = read_download(download)
        expected = expected_rows(filtered, fields)
        if fmt == "csv":
            header, rows = parse_csv(data)
            # Labels are the fields' verbose names.
            assert header[:3] == [
                capfirst(Flight._meta.get_field(name).verbose_name) for name in fields[:3]
            ]
            assert rows == as_csv_cells(expected)
        else:
            records = parse_ndjson(data)
            assert [list(r) for r in records[:1]] == [fields]
            assert [list(r.values()) for r in records] == expected

    # The export page from the "Export" button: NDJSON, three columns, reordered.
    page.click(".object-tools a.streamexport-link")
    page.wait_for_selector("#streamexport-columns")
    for box in page.query_selector_all("#streamexport-columns input[type=checkbox]"):
        if box.get_attribute("value") not in ("id", "carrier__name", "dep_delay"):
            box.uncheck()

    # The arrows reorder the list, and the list order is the column order.
    def row(name):
        return page.locator("#streamexport-columns li", has=page.locator(f"input[value={name}]"))

    for _ in range(fields.index("dep_delay")):  # to the top
        row("dep_delay").locator("button.move-up").click()
    for _ in range(fields.index("carrier__name") + 1):  # above it
        row("carrier__name").locator("button.move-up").click()
    row("id").locator("button.move-down").click()  # id stays checked, moves down one
    order = page.eval_on_selector_all(
        "#streamexport-columns input:checked", "boxes => boxes.map(b => b.value)"
    )
    assert order == ["carrier__name", "dep_delay", "id"]
    page.check("input[name=format][value=ndjson]")
    if os.environ.get("STREAMEXPORT_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "admin-export-page.png"), full_page=True)
        page.emulate_media(color_scheme="dark")
        page.screenshot(path=str(DOCS / "admin-export-page-dark.png"), full_page=True)
        page.emulate_media(color_scheme="light")
    else:
        page.screenshot(path=str(tmp_path / "admin-export-page.png"))
    with page.expect_download() as info:
        page.click("#streamexport-form input[type=submit]")
    records = parse_ndjson(read_download(info.value))
    assert [list(r) for r in records[:1]] == [order]
    assert [list(r.values()) for r in records] == expected_rows(filtered, order)

    # Everything: the unfiltered changelist's export page, both formats, all 336,776 flights.
    page.goto(f"{live_server.url}/admin/flights/flight/")
    page.click(".object-tools a.streamexport-link")
    everything = expected_rows(ordered, fields)
    assert len(everything) == ALL_FLIGHTS
    for fmt in ("csv", "ndjson"):
        page.check(f"input[name=format][value={fmt}]")
        with page.expect_download() as info:
            page.click("#streamexport-form input[type=submit]")
        data = read_download(info.value)
        if fmt == "csv":
            header, rows = parse_csv(data)
            assert len(header) == len(fields)
            assert rows == as_csv_cells(everything)
        else:
            assert [list(r.values()) for r in parse_ndjson(data)] == everything

    # Excel: all flights as .xlsx from the same page, read back cell by cell by calamine and
    # by LibreOffice (what staff open it with), against the database.
    page.check("input[name=format][value=xlsx]")
    with page.expect_download() as info:
        page.click("#streamexport-form input[type=submit]")
    assert info.value.suggested_filename == "flights.xlsx"
    data = read_download(info.value)
    columns = resolve_columns(ordered, fields)
    rows = [list(row) for row in ordered.values_list(*fields).iterator(chunk_size=10_000)]
    zone = settings.TIME_ZONE
    (sheet,) = read_calamine(data)
    assert sheet[0] == [column.label for column in columns]
    assert_same_rows(
        read_back(columns, sheet[1:]), calamine_expected(columns, rows, zone), "calamine"
    )
    csv_rows = read_libreoffice(data, tmp_path)
    assert len(csv_rows) == ALL_FLIGHTS + 1
    expected = [
        [libreoffice_cell(column, value, zone) for column, value in zip(columns, row, strict=True)]
        for row in rows
    ]
    got = libreoffice_read_back(columns, rows, zone, csv_rows[1:])
    assert_same_rows(got, expected, "LibreOffice")
