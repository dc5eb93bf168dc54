"""export_started / export_finished: what they carry and when they are sent."""

from __future__ import annotations

import logging

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import override_settings

from django_streamexport.exceptions import RowLimitExceeded
from django_streamexport.signals import export_finished, export_started
from django_streamexport.streaming import ExportStream
from tests.conftest import make_records
from tests.testapp.models import Record
from tests.testapp.views import ALL_FIELDS

pytestmark = pytest.mark.django_db(transaction=True)

FIELD_NAMES = [f if isinstance(f, str) else f.name for f in ALL_FIELDS]


@pytest.fixture
def received():
    calls = []

    def on_started(sender, **kwargs):
        calls.append(("started", sender, kwargs))

    def on_finished(sender, **kwargs):
        calls.append(("finished", sender, kwargs))

    export_started.connect(on_started)
    export_finished.connect(on_finished)
    yield calls
    export_started.disconnect(on_started)
    export_finished.disconnect(on_finished)


def test_complete_export(client, received):
    make_records("default", 40)
    user = User.objects.create_user("auditor", password="x")
    client.force_login(user)
    response = client.get("/records/export/?format=csv")
    body = b"".join(response.streaming_content)
    response.close()
    assert [c[0] for c in received] == ["started", "finished"]
    (_, sender, started), (_, _, finished) = received
    assert sender is ExportStream
    common = {
        "export_id": response["X-Export-Id"],
        "user": user,
        "model": Record,
        "format": "csv",
        "fields": FIELD_NAMES,
    }
    assert started == {**common, "signal": export_started}
    assert finished.pop("seconds") > 0
    assert finished == {
        **common,
        "signal": export_finished,
        "rows": 40,
        "bytes": len(body),
        "outcome": "complete",
        "error_code": None,
    }


def test_failed_export(client, received):
    make_records("default", 40)
    with override_settings(STREAMEXPORT_MAX_ROWS=10):
        response = client.get("/records/export/?format=ndjson")
        with pytest.raises(RowLimitExceeded):
            b"".join(response.streaming_content)
    response.close()
    finished = received[-1][2]
    assert isinstance(finished["user"], AnonymousUser)
    assert (finished["outcome"], finished["error_code"], finished["rows"]) == (
        "failed",
        "row_limit",
        10,
    )


def test_disconnected_export(client, received):
    make_records("default", 3000)
    response = client.get("/records/export/?format=ndjson")
    chunks = iter(response.streaming_content)
    assert next(chunks) == b""  # headers go out before the query
    next(chunks)
    response.close()
    assert received[-1][2]["outcome"] == "disconnected"
    assert 0 < received[-1][2]["rows"] < 3000


def test_head_and_refused_send_nothing(client, received):
    client.head("/records/export/").close()
    assert client.get("/records/export/?format=nope").status_code == 400
    assert received == []


def test_started_receiver_can_stop_the_export(client, received):
    def veto(sender, **kwargs):
        raise PermissionError("not today")

    export_started.connect(veto)
    try:
        response = client.get("/records/export/?format=csv")
        with pytest.raises(PermissionError):
            b"".join(response.streaming_content)
        response.close()
    finally:
        export_started.disconnect(veto)
    assert received[-1][2]["outcome"] == "failed"


def test_failing_finished_receiver_is_logged_not_raised(client, caplog):
    def broken(sender, **kwargs):
        raise ValueError("audit store down")

    export_finished.connect(broken)
    try:
        response = client.get("/records/export/?format=csv")
        b"".join(response.streaming_content)
        response.close()
    finally:
        export_finished.disconnect(broken)
    assert "export_finished receiver" in caplog.text


def test_example_project_logs_exports(client, caplog):
    from flights import export_audit  # noqa: F401  (connects its receivers)

    make_records("default", 3)
    client.force_login(User.objects.create_user("pilot", password="x"))
    with caplog.at_level(logging.INFO, logger="flights.exports"):
        response = client.get("/records/export/?format=ndjson")
        b"".join(response.streaming_content)
        response.close()
    export_id = response["X-Export-Id"]
    messages = [r.getMessage() for r in caplog.records if r.name == "flights.exports"]
    assert messages[0].startswith(
        f"export {export_id} started: user=pilot model=testapp.Record "
        "format=ndjson fields=id,title,"
    )
    assert messages[1].startswith(
        f"export {export_id} complete: user=pilot model=testapp.Record format=ndjson rows=3 bytes="
    )
