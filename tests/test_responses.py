"""One HTTP start-up for every entry point: the view, the admin export page, the DRF mixin.

Each answers through ``responses.admitted_export_response``, so refusals (429 past the
concurrency limit, 503 when the database cannot be reached), the signals, the headers
and ``HEAD`` must be the same whichever entry point a request reaches.  Real parts only:
PostgreSQL, Django's test client, a database alias on a port where nothing listens.
"""

from __future__ import annotations

import copy
import gc
import socket
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections, transaction
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import path

from django_streamexport.columns import resolve_columns
from django_streamexport.exceptions import FiltersRefused
from django_streamexport.formats.csv import CSVFormat
from django_streamexport.formats.ndjson import NDJSONFormat
from django_streamexport.limits import export_slots
from django_streamexport.responses import check_query
from django_streamexport.signals import export_finished, export_started
from tests.conftest import (
    answer,
    body,
    locked_records,
    logged_tracebacks,
    make_records,
    parse_csv,
    plan_stream,
)
from tests.test_rest_framework import RecordList
from tests.testapp.admin import RecordingRecordAdmin
from tests.testapp.models import Record
from tests.testapp.views import RecordExport, RecordingStream
from tests.urls import urlpatterns as base_urlpatterns

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.test_responses"),
]

#: A download name to clean: a path separator, a colon, accents.
NAME = "Relevé: été/2024"


class NamedRecordExport(RecordExport):
    filename = NAME
    stream_class = RecordingStream


class NamedRecordAdmin(RecordingRecordAdmin):
    def get_export_filename(self, request):
        return NAME


class NamedRecordList(RecordList):
    export_filename = NAME
    export_stream_class = RecordingStream


class FilteredRecordExport(NamedRecordExport):
    """Narrowed by ``?title=`` and ``?title__regex=``, as a list page's filters would."""

    def get_queryset(self):
        queryset = super().get_queryset()
        for name in ("title", "title__regex"):
            if name in self.request.GET:
                queryset = queryset.filter(**{name: self.request.GET[name]})
        return queryset


class FilteredRecordList(NamedRecordList):
    filterset_fields = {"title": ["regex"]}


named_site = admin.AdminSite(name="named_admin")
named_site.register(Record, NamedRecordAdmin)

urlpatterns = [
    *base_urlpatterns,
    path("api/records/", RecordList.as_view()),
    path("named/export/", NamedRecordExport.as_view()),
    path("named-admin/", named_site.urls),
    path("api/named/", NamedRecordList.as_view()),
    path("filtered/export/", FilteredRecordExport.as_view()),
    path("api/filtered/", FilteredRecordList.as_view()),
]

#: The three entry points as the project serves them (tests/urls.py, tests/test_rest_framework.py).
ENTRY_POINTS = {
    "view": "/records/export/",
    "admin": "/admin/testapp/record/export/",
    "drf": "/api/records/",
}
#: The same entry points with the filename NAME and streams kept in RecordingStream.built.
NAMED_ENTRY_POINTS = {
    "view": "/named/export/",
    "admin": "/named-admin/testapp/record/export/",
    "drf": "/api/named/",
}

TOO_MANY = b"Too many exports are running (1 at most); try again in 7 seconds.\n"
UNREACHABLE = b"The export database cannot be reached right now; try again later.\n"


def cache_directives(response) -> set[str]:
    """Return the directive names of ``Cache-Control`` (the admin adds never_cache's)."""
    return {part.split("=")[0].strip().lower() for part in response["Cache-Control"].split(",")}


def refusal(response) -> dict:
    """What a client sees of a refused export."""
    return {
        "status": response.status_code,
        "body": None if response.streaming else response.content,
        "content_type": response["Content-Type"],
        "retry_after": response.get("Retry-After"),
        "no_store": "no-store" in cache_directives(response),
        "streaming": response.streaming,
        "attachment": response.has_header("Content-Disposition"),
    }


@pytest.fixture
def received():
    """The (signal name, kwargs) of every export signal sent during the test."""
    calls = []

    def on_started(sender, **kwargs):
        calls.append(("started", kwargs))

    def on_finished(sender, **kwargs):
        calls.append(("finished", kwargs))

    export_started.connect(on_started)
    export_finished.connect(on_finished)
    yield calls
    export_started.disconnect(on_started)
    export_finished.disconnect(on_finished)


@pytest.fixture
def recorded():
    """The streams the named entry points build, in order."""
    RecordingStream.built.clear()
    yield RecordingStream.built
    RecordingStream.built.clear()


@pytest.fixture
def no_exports_running():
    # Unclosed responses of earlier tests give their places back when collected.
    gc.collect()
    assert export_slots.active == 0


UNREACHABLE_ALIAS = "unreachable"


@pytest.fixture(scope="module", autouse=True)
def unreachable_alias():
    """Add the alias ``unreachable``: PostgreSQL on a local port bound but never listening.

    Connecting is refused (the socket stays bound for the module, so nothing else can
    listen there).  Module-scoped, so the alias exists before each test's database setup
    and a test can list it in ``databases``; a ``TEST`` mirror of ``default``, so that
    test's teardown does not flush it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        settings_dict = copy.deepcopy(connections["default"].settings_dict)
        settings_dict.update(HOST="127.0.0.1", PORT=str(sock.getsockname()[1]))
        settings_dict["TEST"] = {**settings_dict["TEST"], "MIRROR": "default"}
        connections.settings[UNREACHABLE_ALIAS] = settings_dict
        try:
            yield UNREACHABLE_ALIAS
        finally:
            connection = getattr(connections._connections, UNREACHABLE_ALIAS, None)
            if connection is not None:
                connection.close()
                delattr(connections._connections, UNREACHABLE_ALIAS)
            del connections.settings[UNREACHABLE_ALIAS]


# --- refusals: 429 and 503 ---------------------------------------------------------------


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@override_settings(STREAMEXPORT_MAX_CONCURRENT_EXPORTS=1, STREAMEXPORT_RETRY_AFTER=7)
def test_past_the_concurrency_limit_every_entry_point_answers_429_like_the_view(
    admin_client, entry_point, no_exports_running, received
):
    records = make_records("default")
    url = ENTRY_POINTS[entry_point]
    running = admin_client.get(url, {"format": "csv"})
    assert running.status_code == 200
    assert export_slots.active == 1
    refused = admin_client.get(url, {"format": "csv"})
    by_view = admin_client.get(ENTRY_POINTS["view"], {"format": "csv"})
    assert refusal(refused) == refusal(by_view)
    assert refusal(refused) == {
        "status": 429,
        "body": TOO_MANY,
        "content_type": "text/plain; charset=utf-8",
        "retry_after": "7",
        "no_store": True,
        "streaming": False,
        "attachment": False,
    }
    # The refused requests took no place and sent no signal; the running export finishes.
    assert export_slots.active == 1
    assert received == []
    rows = parse_csv(body(running))
    assert [int(row[0]) for row in rows[1:]] == [r.id for r in records]
    assert export_slots.active == 0
    again = admin_client.get(url, {"format": "csv"})
    assert again.status_code == 200
    body(again)
    assert export_slots.active == 0


@pytest.mark.django_db(transaction=True, databases=["default", UNREACHABLE_ALIAS])
@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@override_settings(STREAMEXPORT_RETRY_AFTER=7)
def test_unreachable_database_is_a_503_from_every_entry_point_like_the_view(
    admin_client, entry_point, no_exports_running, received
):
    make_records("default")
    url = ENTRY_POINTS[entry_point]
    with override_settings(STREAMEXPORT_DATABASE=UNREACHABLE_ALIAS):
        refused = admin_client.get(url, {"format": "csv"})
        by_view = admin_client.get(ENTRY_POINTS["view"], {"format": "csv"})
    assert refusal(refused) == refusal(by_view)
    assert refusal(refused) == {
        "status": 503,
        "body": UNREACHABLE,
        "content_type": "text/plain; charset=utf-8",
        "retry_after": "7",
        "no_store": True,
        "streaming": False,
        "attachment": False,
    }
    # The slot taken before the database check was given back; no export started.
    assert export_slots.active == 0
    assert received == []
    # The same request on the reachable database streams.
    response = admin_client.get(url, {"format": "csv"})
    assert response.status_code == 200
    assert len(parse_csv(body(response))) == Record.objects.count() + 1


# --- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_signals_carry_the_requesting_user(client, entry_point, received):
    make_records("default", 5)
    user = User.objects.create_superuser("auditor", "auditor@example.com", "pw")
    client.force_login(user)
    response = client.get(ENTRY_POINTS[entry_point], {"format": "csv"})
    assert response.status_code == 200
    body(response)
    assert [name for name, _ in received] == ["started", "finished"]
    for _, kwargs in received:
        assert isinstance(kwargs["user"], User)
        assert kwargs["user"].pk == user.pk
        assert kwargs["export_id"] == response["X-Export-Id"]
        assert kwargs["model"] is Record
        assert kwargs["format"] == "csv"
    finished = received[1][1]
    assert (finished["outcome"], finished["rows"]) == ("complete", 5)


# --- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "disposition"),
    [
        (
            "csv",
            "text/csv; charset=utf-8",
            'attachment; filename="Releve-_ete-2024.csv"; '
            "filename*=UTF-8''Relev%C3%A9-%20%C3%A9t%C3%A9-2024.csv",
        ),
        (
            "ndjson",
            "application/x-ndjson; charset=utf-8",
            'attachment; filename="Releve-_ete-2024.ndjson"; '
            "filename*=UTF-8''Relev%C3%A9-%20%C3%A9t%C3%A9-2024.ndjson",
        ),
    ],
)
@pytest.mark.parametrize("entry_point", NAMED_ENTRY_POINTS)
def test_every_entry_point_sends_the_same_export_headers(
    admin_client, entry_point, fmt, content_type, disposition, recorded
):
    make_records("default", 3)
    response = admin_client.get(NAMED_ENTRY_POINTS[entry_point], {"format": fmt})
    assert response.status_code == 200
    assert response.streaming
    (stream,) = recorded
    # The name is the plan's: cleaned once, the format's extension added.
    assert stream.plan.filename == f"Relevé- été-2024.{fmt}"
    assert response["Content-Disposition"] == disposition
    assert response["Content-Type"] == content_type
    assert response["X-Export-Id"] == stream.export_id
    assert len(stream.export_id) == 12
    assert "no-store" in cache_directives(response)
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Accel-Buffering"] == "no"
    assert not response.has_header("Content-Length")
    body(response)
    assert (stream.outcome, stream.rows) == ("complete", 3)


def test_the_three_entry_points_send_the_same_bytes(admin_client, recorded):
    make_records("default")
    bodies = {
        name: body(admin_client.get(url, {"format": "csv", "fields": ["id", "title"]}))
        for name, url in NAMED_ENTRY_POINTS.items()
    }
    # The admin exports the fields asked for, the others their own: compare what they share.
    rows = {name: parse_csv(data) for name, data in bodies.items()}
    ids = [r.id for r in Record.objects.order_by("id")]
    for name, table in rows.items():
        assert [int(row[0]) for row in table[1:]] == ids, name
        assert table[0][:2] == ["ID", "Record title"], name
    assert [row[:2] for row in rows["view"]] == [row[:2] for row in rows["admin"]]
    assert [row[:2] for row in rows["drf"]] == [row[:2] for row in rows["admin"]]


# --- HEAD ------------------------------------------------------------------------------------


def serve(client, method: str, url: str, query: dict) -> tuple[str, dict, bytes]:
    """Answer one request as a WSGI server does; return (status, headers, body).

    Django's WSGI handler with ``client``'s cookies; the whole response is iterated, as
    servers do for ``HEAD`` too (they discard the bytes; Django's test client instead
    replaces a ``HEAD`` body with nothing), then closed.
    """
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": url,
        "QUERY_STRING": urlencode(query, doseq=True),
        "HTTP_COOKIE": "; ".join(
            f"{name}={morsel.value}" for name, morsel in client.cookies.items()
        ),
    }
    setup_testing_defaults(environ)
    started = {}

    def start_response(status, headers, exc_info=None):
        started.update(status=status, headers=dict(headers))

    response = WSGIHandler()(environ, start_response)
    try:
        data = b"".join(response)
    finally:
        response.close()
    return started["status"], started["headers"], data


def _export_queries(captured) -> list[str]:
    """The SQL of the export itself: its transaction, cursor or page queries."""
    return [
        query["sql"]
        for query in captured
        if "testapp_record" in query["sql"] or query["sql"].split()[0] in ("BEGIN", "DECLARE")
    ]


@pytest.mark.parametrize("entry_point", NAMED_ENTRY_POINTS)
@override_settings(STREAMEXPORT_MAX_CONCURRENT_EXPORTS=1)
def test_head_releases_its_slot_and_runs_no_export_query(
    admin_client, entry_point, no_exports_running, received, recorded
):
    make_records("default", 40)
    url = NAMED_ENTRY_POINTS[entry_point]
    with CaptureQueriesContext(connections["default"]) as head_queries:
        status, headers, data = serve(admin_client, "HEAD", url, {"format": "csv"})
    # Read now: the next request's request_started empties the connection's query log.
    assert head_queries.captured_queries != []  # the session and the user were read
    assert _export_queries(head_queries.captured_queries) == []
    assert status == "200 OK"
    assert headers["Content-Type"] == "text/csv; charset=utf-8"
    assert headers["Content-Disposition"].startswith("attachment; ")
    assert data == b""
    # The stream was never iterated, and closing the response gave its place back
    # (the recorded stream is still referenced: no garbage collection did it).
    (stream,) = recorded
    assert (stream.outcome, stream.rows) == (None, 0)
    assert received == []
    assert export_slots.active == 0
    # The place is free (the limit is 1), and the same capture does see an export's queries.
    with CaptureQueriesContext(connections["default"]) as get_queries:
        status, _, data = serve(admin_client, "GET", url, {"format": "csv"})
    assert status == "200 OK"
    assert len(parse_csv(data)) == 41
    assert _export_queries(get_queries.captured_queries) != []
    assert [name for name, _ in received] == ["started", "finished"]
    assert export_slots.active == 0


def fake_gevent_threading(monkeypatch):
    """Make the library believe gevent has patched ``threading`` (connections per greenlet)."""
    import sys
    import types

    monkeypatch.setitem(
        sys.modules, "gevent.monkey", types.SimpleNamespace(is_module_patched=lambda name: True)
    )


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_under_gevent_the_export_closes_its_connection_when_it_ends(client, monkeypatch, method):
    """A greenlet's connection is not reused by the next client: not kept past the export.

    Django's test client keeps the connection between requests, as ``CONN_MAX_AGE`` does;
    ``tests/test_load.py`` counts the sessions of a real gevent worker."""
    make_records("default", 30)
    connection = connections["default"]
    response = getattr(client, method.lower())("/records/export/", {"format": "csv"})
    b"".join(response.streaming_content)  # the test client closes the response at the end
    assert connection.connection is not None  # not gevent: kept, as CONN_MAX_AGE says
    fake_gevent_threading(monkeypatch)
    response = getattr(client, method.lower())("/records/export/", {"format": "csv"})
    assert connection.connection is not None  # open for the export
    data = b"".join(response.streaming_content)
    assert connection.connection is None
    assert len(parse_csv(data)) == (31 if method == "GET" else 0)


# --- filters the driver or the database refuses: 400 before the response starts -------------

#: PostgreSQL refuses to compile it when planning the query.
BAD_REGEX = (
    "The export's filters were refused: invalid regular expression: parentheses () not balanced."
)


@pytest.mark.parametrize(
    ("entry_point", "url", "query"),
    [
        ("view", "/filtered/export/", {"title__regex": "("}),
        ("admin", "/named-admin/testapp/record/export/", {"_changelist_filters": "title__regex=("}),
        ("drf", "/api/filtered/", {"title__regex": "("}),
    ],
)
def test_a_regex_the_database_refuses_is_a_400_from_every_entry_point(
    admin_client, entry_point, url, query, no_exports_running, received, recorded, caplog
):
    """Planned before the status line, the query's error is a 400; it used to cut a 200 short."""
    make_records("default")
    admin_client.raise_request_exception = False
    caplog.set_level("INFO")
    response = admin_client.get(url, {**query, "format": "csv"})
    assert answer(response) == (400, BAD_REGEX)
    assert not response.has_header("Content-Disposition")
    if entry_point != "admin":  # the admin answers with its export page and the error on it
        assert response["Content-Type"] == "text/plain; charset=utf-8"
        assert "no-store" in cache_directives(response)
    assert logged_tracebacks(caplog) == []
    # The stream was built and closed unread: no export started, its place is free.
    (stream,) = recorded
    assert (stream.outcome, stream.rows) == (None, 0)
    assert received == []
    gc.collect()
    assert export_slots.active == 0
    # A regular expression PostgreSQL takes streams its rows.
    valid = {name: value.replace("(", "^=") for name, value in query.items()}
    rows = parse_csv(body(admin_client.get(url, {**valid, "format": "csv"})))
    expected = Record.objects.filter(title__regex="^=").order_by("id")
    assert [int(row[0]) for row in rows[1:]] == list(expected.values_list("id", flat=True))
    assert len(rows) > 1


@pytest.mark.parametrize(
    ("url", "query", "parameter"),
    [
        ("/filtered/export/", {"title": "a\x00b"}, "title"),
        ("/filtered/export/", {"title": "plain", "title__regex": "\x00"}, "title__regex"),
        (
            "/named-admin/testapp/record/export/",
            {"_changelist_filters": "status__exact=p&title__startswith=%3D%00"},
            "title__startswith",
        ),
    ],
)
def test_a_nul_byte_is_a_400_naming_its_parameter(admin_client, url, query, parameter, caplog):
    make_records("default")
    caplog.set_level("INFO")
    response = admin_client.get(url, {**query, "format": "ndjson"})
    status, text = answer(response)
    assert status == 400
    assert text.startswith(f"The filter '{parameter}' was refused: ")
    assert "NUL (0x00)" in text
    assert logged_tracebacks(caplog) == []


@pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
@pytest.mark.parametrize("alias", ["default", "sqlite"])
@pytest.mark.parametrize(
    ("options", "reader"),
    [
        ({}, "copy"),
        ({"copy_mode": True}, "copy"),
        ({"copy_mode": False}, "prefetching cursor"),
        ({"copy_mode": False, "prefetch": False, "database_formatting": False}, "cursor"),
        ({"mode": "keyset"}, "keyset"),
    ],
)
def test_every_reader_has_its_first_query_checked(alias, options, reader):
    make_records(alias)
    queryset = Record.objects.using(alias).filter(title__regex="(")
    columns = resolve_columns(queryset, ["id", "title"])
    stream = plan_stream(queryset, columns, CSVFormat(columns), using=alias, **options)
    if alias == "default":
        if not is_psycopg3 and reader in ("copy", "prefetching cursor"):
            reader = "cursor"  # COPY and prefetching need psycopg 3
        assert stream.reader.name == reader
    reason = (
        "invalid regular expression: parentheses () not balanced"
        if alias == "default"
        else "the database cannot evaluate their values"
    )
    with pytest.raises(FiltersRefused) as refused:
        check_query(stream)
    assert refused.value.reason == reason
    stream.close()
    # The same export with a regular expression the database takes passes the check.
    queryset = Record.objects.using(alias).filter(title__regex="^=")
    valid = plan_stream(queryset, columns, CSVFormat(columns), using=alias, **options)
    check_query(valid)
    rows = parse_csv(b"".join(valid))
    assert [int(row[0]) for row in rows[1:]] == list(
        queryset.order_by("id").values_list("id", flat=True)
    )


def test_only_a_query_with_parameters_is_planned_before_the_response(admin_client):
    """The check costs an unfiltered export nothing: no value of the request to refuse."""
    make_records("default")
    planned = "SET LOCAL jit = off; SET LOCAL statement_timeout = 300000; EXPLAIN"
    for query, expected in (({}, []), ({"title__regex": "^="}, [planned])):
        with CaptureQueriesContext(connections["default"]) as queries:
            response = admin_client.get("/filtered/export/", {**query, "format": "csv"})
        # Read now: these are the queries sent before the response, the body is unread.
        before = [q["sql"] for q in queries.captured_queries if "testapp_record" in q["sql"]]
        assert [sql.split(" SELECT ")[0] for sql in before] == expected, query
        rows = parse_csv(body(response))
        assert len(rows) > 1


@override_settings(STREAMEXPORT_STATEMENT_TIMEOUT=0.2, STREAMEXPORT_RETRY_AFTER=7)
def test_a_table_locked_elsewhere_is_a_503_after_the_statement_timeout(
    admin_client, no_exports_running, received
):
    """Planning waits for the lock; the export's statement timeout bounds that wait."""
    make_records("default")
    with locked_records():
        response = admin_client.get("/filtered/export/", {"title__regex": "^=", "format": "csv"})
    assert refusal(response) == {
        "status": 503,
        "body": b"The export database is busy right now; try again later.\n",
        "content_type": "text/plain; charset=utf-8",
        "retry_after": "7",
        "no_store": True,
        "streaming": False,
        "attachment": False,
    }
    assert received == []
    assert export_slots.active == 0


def test_a_refused_query_leaves_the_callers_transaction_usable():
    """Inside the caller's transaction the check runs in a savepoint (PostgreSQL would
    otherwise refuse every later statement: "current transaction is aborted")."""
    with transaction.atomic():
        kept = Record.objects.create(title="kept")
        queryset = Record.objects.filter(title__regex="(")
        columns = resolve_columns(queryset, ["id", "title"])
        stream = plan_stream(queryset, columns, NDJSONFormat(columns))
        with pytest.raises(FiltersRefused):
            check_query(stream)
        stream.close()
        assert list(Record.objects.values_list("id", flat=True)) == [kept.id]
