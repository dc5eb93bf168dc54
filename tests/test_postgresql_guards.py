"""apply_guards(): SET LOCAL timeouts that live exactly as long as the export's transaction;
IdleWatch: the idle bound held in Python where a statement runs while the consumer is away."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from django.db import OperationalError, connections, transaction
from django.test.utils import CaptureQueriesContext

from django_streamexport import failures
from django_streamexport.postgresql.guards import (
    IdleWatch,
    apply_guards,
    idle_timeout_error,
    milliseconds,
    session_idle_timeout,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])

#: PostgreSQL's names of the two guards.
GUCS = ["statement_timeout", "idle_in_transaction_session_timeout"]


def settings_now(alias="default"):
    """Return the session's two timeouts in milliseconds, as PostgreSQL stores them."""
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            [GUCS],
        )
        return {name: int(value) for name, value in cursor.fetchall()}


def show(name, alias="default"):
    with connections[alias].cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


@pytest.mark.django_db(databases=[])  # pure: no database
@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (300, 300_000),
        (1.5, 1500),
        (0.25, 250),
        (Decimal("0.125"), 125),
        ("2", 2000),  # float() of the setting
        (0.0016, 2),  # rounded to the nearest millisecond
        (0.0014, 1),
        (0.0004, 1),  # rounds to 0: at least 1 (0 would mean no limit to PostgreSQL)
        (0.00001, 1),
        (0, 1),
    ],
)
def test_milliseconds(seconds, expected):
    assert milliseconds(seconds) == expected
    assert isinstance(milliseconds(seconds), int)


# Values that leave time for the test's own statements inside the transaction: a
# guard of a few milliseconds would cancel them on a loaded machine; milliseconds()
# is tested above for those.
@pytest.mark.parametrize(
    ("statement_timeout", "idle_timeout", "expected"),
    [
        (1.5, 30, {"statement_timeout": 1500, "idle_in_transaction_session_timeout": 30_000}),
        (20.0004, None, {"statement_timeout": 20_000}),  # whole milliseconds
        (None, 45.5, {"idle_in_transaction_session_timeout": 45_500}),
        (7, 0, {"statement_timeout": 7000}),
    ],
)
def test_guards_are_set_inside_the_transaction_and_gone_after_it(
    statement_timeout, idle_timeout, expected
):
    server = settings_now()
    assert all(server[name] != value for name, value in expected.items())
    with transaction.atomic(using="default"):
        apply_guards(
            connections["default"],
            statement_timeout=statement_timeout,
            idle_in_transaction_timeout=idle_timeout,
        )
        inside = settings_now()
        assert inside == {**server, **expected}
    assert settings_now() == server


def test_show_statement_timeout_inside_and_after():
    before = show("statement_timeout")
    with transaction.atomic(using="default"):
        apply_guards(connections["default"], statement_timeout=2, idle_in_transaction_timeout=90)
        assert show("statement_timeout") == "2s"
        assert show("idle_in_transaction_session_timeout") == "90s"
    assert show("statement_timeout") == before
    # A guarded transaction that fails ends its settings too.
    with pytest.raises(ZeroDivisionError), transaction.atomic(using="default"):
        apply_guards(connections["default"], statement_timeout=3, idle_in_transaction_timeout=None)
        assert show("statement_timeout") == "3s"
        1 / 0  # noqa: B018
    assert show("statement_timeout") == before


def test_the_statement_timeout_cancels_a_slow_statement():
    with pytest.raises(OperationalError, match="statement timeout") as info:
        with transaction.atomic(using="default"):
            apply_guards(
                connections["default"], statement_timeout=0.05, idle_in_transaction_timeout=None
            )
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_sleep(5)")
    cause = info.value.__cause__  # the driver's error: psycopg's sqlstate, psycopg2's pgcode
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    assert code == "57014"
    with connections["default"].cursor() as cursor:  # the next statement is unguarded
        cursor.execute("SELECT pg_sleep(0.1)")


@pytest.mark.parametrize(("statement_timeout", "idle_timeout"), [(None, None), (0, 0), (0, None)])
def test_no_limits_send_nothing(statement_timeout, idle_timeout):
    server = settings_now()
    with transaction.atomic(using="default"):
        with CaptureQueriesContext(connections["default"]) as queries:
            apply_guards(
                connections["default"],
                statement_timeout=statement_timeout,
                idle_in_transaction_timeout=idle_timeout,
            )
        assert len(queries) == 0
        assert settings_now() == server


def test_a_no_op_on_sqlite():
    connection = connections["sqlite"]
    with transaction.atomic(using="sqlite"):
        with CaptureQueriesContext(connection) as queries:
            apply_guards(connection, statement_timeout=5, idle_in_transaction_timeout=5)
        assert len(queries) == 0
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)


def test_session_idle_timeout_is_the_sessions_setting():
    connection = connections["default"]
    with transaction.atomic(using="default"):
        assert session_idle_timeout(connection) is None  # PostgreSQL's default: off
        apply_guards(connection, statement_timeout=None, idle_in_transaction_timeout=7.25)
        assert session_idle_timeout(connection) == 7.25
    assert session_idle_timeout(connections["sqlite"]) is None


# --- IdleWatch -------------------------------------------------------------------------------


def idle_watchers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "streamexport-idle"]


def wait_for_no_watcher(timeout: float = 10) -> None:
    for thread in idle_watchers():
        thread.join(timeout)
    assert not idle_watchers()


@pytest.mark.django_db(databases=[])
def test_idle_watch_ends_the_session_of_a_consumer_away_too_long():
    ended = threading.Event()
    with IdleWatch(0.05, ended.set, idle_timeout_error) as watch:
        watch.away()
        assert ended.wait(10), "the watch never ended the session"
        with pytest.raises(Exception) as info:
            watch.back()
    assert watch.expired >= 0.05
    assert failures.describe_failure(info.value).code == "idle_timeout"
    assert "not asked for rows for" in str(info.value)
    with pytest.raises(Exception, match="idle-in-transaction"):
        watch.back()  # the session stays ended
    wait_for_no_watcher()


@pytest.mark.django_db(databases=[])
def test_idle_watch_never_ends_the_session_while_the_consumer_is_present():
    calls = []
    with IdleWatch(0.01, lambda: calls.append(1), idle_timeout_error) as watch:
        for _ in range(5):
            watch.away()
            watch.back()
        time.sleep(0.2)  # present: many periods pass
        watch.back()
    assert calls == [] and watch.expired is None
    wait_for_no_watcher()


@pytest.mark.django_db(databases=[])
@pytest.mark.parametrize("seconds", [None, 0])
def test_idle_watch_without_a_bound_starts_no_watcher(seconds):
    with IdleWatch(seconds, lambda: pytest.fail("ended"), idle_timeout_error) as watch:
        assert not idle_watchers()
        watch.away()
        time.sleep(0.05)
        watch.back()
