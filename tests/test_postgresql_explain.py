"""plan_query(): the start-up check's EXPLAIN, with JIT off, leaving no setting behind."""

from __future__ import annotations

import copy

import pytest
from django.db import DataError, OperationalError, connection, connections, transaction
from django.db.backends.postgresql.psycopg_any import is_psycopg3
from django.test.utils import CaptureQueriesContext

from django_streamexport.postgresql.explain import plan_query
from tests.conftest import locked_records, make_records
from tests.testapp.models import Record

pytestmark = pytest.mark.django_db(transaction=True)


def query_of(queryset):
    """Return (sql, params) of ``queryset`` as the export would run it."""
    return queryset.query.get_compiler(using="default").as_sql()


def setting(conn, name):
    with conn.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return cursor.fetchone()[0]


def jitted(lines):
    return any(line.strip().startswith("JIT:") for line in lines)


@pytest.fixture
def eager_jit():
    """Make PostgreSQL JIT-compile every plan in this session (jit_above_cost 0)."""
    with connection.cursor() as cursor:
        cursor.execute("SET jit_above_cost = 0")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET jit_above_cost")


def test_plans_without_jit_in_one_round_trip_and_leaves_jit_on(eager_jit):
    make_records("default", 20)
    sql, params = query_of(Record.objects.filter(title__regex="^r", count__gt=0).values_list("id"))
    # This server JIT-compiles the plan when asked for EXPLAIN (else the test proves nothing).
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        assert jitted([row[0] for row in cursor.fetchall()])
    with CaptureQueriesContext(connection) as queries:
        lines = plan_query(connection, sql, params)
    assert any("on testapp_record" in line for line in lines)
    assert not jitted(lines)
    assert len(queries) == (1 if connection.get_autocommit() else 3)
    assert setting(connection, "jit") == "on"  # SET LOCAL ended with the statement's transaction


def test_in_a_transaction_it_plans_in_a_savepoint_and_leaves_the_transaction_as_it_was(eager_jit):
    with transaction.atomic():
        kept = Record.objects.create(title="kept")
        sql, params = query_of(Record.objects.filter(title__regex="(").values_list("id"))
        with pytest.raises(DataError, match="invalid regular expression"):
            plan_query(connection, sql, params)
        assert setting(connection, "jit") == "on"
        sql, params = query_of(Record.objects.values_list("id"))
        assert not jitted(plan_query(connection, sql, params))
        assert setting(connection, "jit") == "on"  # the savepoint was rolled back
        assert list(Record.objects.values_list("id", flat=True)) == [kept.id]


SERVER_SIDE_BINDING = "server_side_binding"


@pytest.fixture(scope="module")
def server_side_binding():
    """Add the alias ``server_side_binding``: the test database, psycopg 3 binding on the server.

    A ``TEST`` mirror of ``default`` (no database of its own, no flush); module-scoped, so
    it exists before the test's database setup lists it.
    """
    settings_dict = copy.deepcopy(connections["default"].settings_dict)
    settings_dict["OPTIONS"] = {**settings_dict.get("OPTIONS", {}), "server_side_binding": True}
    settings_dict["TEST"] = {**settings_dict["TEST"], "MIRROR": "default"}
    connections.settings[SERVER_SIDE_BINDING] = settings_dict
    try:
        yield SERVER_SIDE_BINDING
    finally:
        bound = getattr(connections._connections, SERVER_SIDE_BINDING, None)
        if bound is not None:
            bound.close()
            delattr(connections._connections, SERVER_SIDE_BINDING)
        del connections.settings[SERVER_SIDE_BINDING]


@pytest.mark.skipif(not is_psycopg3, reason="server-side binding is a psycopg 3 option")
@pytest.mark.django_db(transaction=True, databases=["default", SERVER_SIDE_BINDING])
def test_with_server_side_binding_it_plans_in_a_transaction_of_its_own(server_side_binding):
    bound = connections[server_side_binding]
    with bound.cursor() as cursor:
        cursor.execute("SET jit_above_cost = 0")
        # The cursor does not merge parameters: two statements in one call are refused.
        with pytest.raises(Exception, match="multiple commands"):
            cursor.execute("SELECT %s; SELECT 2", [1])
    sql, params = query_of(Record.objects.filter(title__startswith="a").values_list("id"))
    with bound.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        assert jitted([row[0] for row in cursor.fetchall()])
    assert not jitted(plan_query(bound, sql, params))
    sql, params = query_of(Record.objects.filter(title__regex="(").values_list("id"))
    with pytest.raises(DataError, match="invalid regular expression"):
        plan_query(bound, sql, params)
    assert setting(bound, "jit") == "on"
    assert bound.get_autocommit()


def test_the_statement_timeout_bounds_the_wait_for_a_locked_table():
    sql, params = query_of(Record.objects.filter(title__regex="^a").values_list("id"))
    with locked_records():
        with pytest.raises(OperationalError, match="statement timeout"):
            plan_query(connection, sql, params, statement_timeout=0.2)
    assert setting(connection, "statement_timeout") == "0"
    assert plan_query(connection, sql, params, statement_timeout=0.2)
