"""Shared fixtures: both databases, a set of nasty records, and export helpers."""

from __future__ import annotations

import contextlib
import csv
import datetime
import html
import io
import json
import logging
import re
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connections

from tests.testapp.models import Author, Country, Record

#: Text that breaks naive CSV writers and spreadsheet imports.
NASTY_TEXTS = [
    "plain",
    "comma, inside",
    'quote " inside',
    "new\nline",
    "crlf\r\nline",
    "semi;colon",
    "=SUM(A1:A2)",
    "+1",
    "-1",
    "@cmd",
    "\ttab first",
    "\rcr first",
    "unicode é ñ ß 中文",
    "emoji 🎉👩‍👩‍👧",
    "",
    "'already quoted",
    "  spaces around  ",
]

DATABASES = ["default", "sqlite"]


#: Mark for tests on both databases in autocommit, the production path (the
#: default test transaction would hide WITH HOLD cursors and disconnect cleanup).
both_databases = pytest.mark.django_db(transaction=True, databases=DATABASES)


@pytest.fixture(params=DATABASES, ids=["postgresql", "sqlite"])
def db_alias(request):
    """Run the test once on PostgreSQL and once on SQLite (needs ``both_databases``)."""
    return request.param


@pytest.fixture
def pg_alias():
    """PostgreSQL only (needs ``both_databases``)."""
    return "default"


def make_records(alias: str, count: int | None = None) -> list[Record]:
    """Create records with nasty values (and NULLs) on ``alias``; return them fresh from the DB."""
    country = Country.objects.using(alias).create(name='Côte d\'Ivoire, "CI"')
    author = Author.objects.using(alias).create(name='=HYPERLINK("x")', country=country)
    lonely = Author.objects.using(alias).create(name="No country", country=None)
    tz_plus = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    records = []
    texts = (
        NASTY_TEXTS
        if count is None
        else [f'row {i}, "q"\n{NASTY_TEXTS[i % len(NASTY_TEXTS)]}' for i in range(count)]
    )
    for i, text in enumerate(texts):
        records.append(
            Record(
                title=text,
                body=None if i % 3 == 0 else text * 2,
                status="p" if i % 2 else "d",
                count=None if i % 5 == 0 else (-1) ** i * i * 1000,
                amount=None if i % 4 == 0 else Decimal("-1234.50") + i,
                ratio=None if i % 6 == 0 else i / 7,
                flag=(None, True, False)[i % 3],
                created=None
                if i % 7 == 0
                else datetime.datetime(2013, 1, 1, 5, 30, 15, 123000, tzinfo=tz_plus)
                + datetime.timedelta(hours=i),
                day=None
                if i % 8 == 0
                else datetime.date(2013, 12, 31) - datetime.timedelta(days=i),
                at=None if i % 9 == 0 else datetime.time(23, 59, i % 60),
                took=None
                if i % 10 == 0
                else datetime.timedelta(days=i, seconds=3661, microseconds=5),
                key=uuid.UUID(int=i + 1),
                data=None if i % 11 == 0 else {"i": i, "text": text, "nested": [1, "=2", None]},
                author=(author, lonely, None)[i % 3],
            )
        )
    Record.objects.using(alias).bulk_create(records, batch_size=500)
    return list(Record.objects.using(alias).select_related("author__country").order_by("id"))


def parse_csv(data: bytes) -> list[list[str]]:
    """Parse CSV bytes with the standard library's reader (an independent reader)."""
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def parse_ndjson(data: bytes) -> list[dict]:
    """Parse NDJSON bytes with the standard library's json module."""
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def body(response) -> bytes:
    """Read a streaming response's whole body and close it, as a server would."""
    try:
        return b"".join(response.streaming_content)
    finally:
        response.close()


def answer(response) -> tuple[int, str]:
    """Return (status, what the client reads) of a response, reading a streamed body whole.

    What is read: the plain-text body of a refusal, the error note of an admin page, or
    for a streamed export ``"streamed N bytes"``, or ``"cut after N bytes: <error>"`` when
    the transfer ends with an exception (a server would cut it short).
    """
    if not response.streaming:
        text = html.unescape(response.content.decode("utf-8", "replace"))
        note = re.search(r'<p class="errornote">(.*?)</p>', text, re.S)
        return response.status_code, (note.group(1) if note else text).strip()
    received = 0
    try:
        for chunk in response.streaming_content:
            received += len(chunk)
    except Exception as exc:
        return response.status_code, f"cut after {received} bytes: {type(exc).__name__}: {exc}"
    finally:
        response.close()
    return response.status_code, f"streamed {received} bytes"


def logged_tracebacks(caplog) -> list[str]:
    """Return the messages logged at ERROR or above, or with a traceback, in ``caplog``."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR or record.exc_info
    ]


def server_side_cursors(alias: str = "default") -> list[tuple]:
    """Return (name, is_holdable) of the open cursors of ``alias``'s own session."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT name, is_holdable FROM pg_cursors")
        return cursor.fetchall()


def backend_pid(alias: str = "default") -> int:
    """Return the PostgreSQL backend pid of ``alias``'s connection."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@contextlib.contextmanager
def other_session(alias: str = "default"):
    """Yield a cursor on a new connection to ``alias`` (another session, autocommit, any driver)."""
    connection = connections.create_connection(alias)
    try:
        with connection.cursor() as cursor:
            yield cursor
    finally:
        connection.close()


@contextlib.contextmanager
def locked_records(release_after: float = 10):
    """Hold ACCESS EXCLUSIVE on the records' table in another session (released on exit).

    Released after ``release_after`` seconds at the latest, so that code which waits on
    the lock ends anyway (and a test that should not have waited fails instead of hanging).
    """
    with other_session() as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE testapp_record IN ACCESS EXCLUSIVE MODE")
        release = threading.Timer(release_after, locker.connection.rollback)
        release.start()
        try:
            yield
        finally:
            release.cancel()
            release.join()
            locker.execute("ROLLBACK")


def session_state(pid: int) -> str | None:
    """Return backend ``pid``'s state as another session sees it in pg_stat_activity."""
    with other_session() as cursor:
        cursor.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row[0] if row else None


def plan_stream(queryset, columns, export_format, *, stream_class=None, **options):
    """Return a stream of ``queryset`` built as entry points build it: plan, then stream.

    ``columns`` are resolved columns, ``export_format`` a format instance; ``options``
    are :func:`~django_streamexport.plan.build_plan`'s (``chunk_size``, ``using``...).
    """
    from django_streamexport.plan import build_plan
    from django_streamexport.streaming import ExportStream

    plan = build_plan(queryset, columns=columns, export_format=export_format, **options)
    return (stream_class or ExportStream)(plan)


def traced_peak(stream) -> tuple[int, int]:
    """Iterate ``stream`` whole; return (peak bytes Python allocated meanwhile, bytes sent)."""
    import tracemalloc

    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in stream)
        return tracemalloc.get_traced_memory()[1], total
    finally:
        tracemalloc.stop()


def staff_user(username: str = "staff", *codenames: str, superuser: bool = False):
    """Create a staff user (``<username>@example.com``, password ``pw``) holding the
    ``testapp.Record`` permissions ``codenames``; a superuser with ``superuser``."""
    from django.contrib.auth.models import Permission, User
    from django.contrib.contenttypes.models import ContentType

    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw")
    user = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=True)
    content_type = ContentType.objects.get_for_model(Record)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(codename=codename, content_type=content_type)
        )
    return user
