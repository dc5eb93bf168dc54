"""Resolving export fields: kinds, labels, relations and annotations."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, F

from django_streamexport import columns as kinds
from django_streamexport.columns import Column, compile_query, count_placeholders, resolve_columns
from django_streamexport.exceptions import FiltersRefused
from tests.testapp.models import Author, Record


@pytest.mark.parametrize(
    ("field", "kind"),
    [
        ("id", kinds.INTEGER),
        ("title", kinds.TEXT),
        ("body", kinds.TEXT),
        ("count", kinds.INTEGER),
        ("amount", kinds.DECIMAL),
        ("ratio", kinds.FLOAT),
        ("flag", kinds.BOOLEAN),
        ("created", kinds.DATETIME),
        ("day", kinds.DATE),
        ("at", kinds.TIME),
        ("took", kinds.DURATION),
        ("key", kinds.UUID),
        ("data", kinds.JSON),
        ("author", kinds.INTEGER),  # the related primary key
        ("author__name", kinds.TEXT),
        ("author__country", kinds.INTEGER),
        ("author__country__name", kinds.TEXT),
    ],
)
def test_kinds(field, kind):
    (column,) = resolve_columns(Record.objects.all(), [field])
    assert column.kind == kind
    assert column.lookup == column.name == field


def test_labels():
    columns = resolve_columns(
        Record.objects.all(),
        ["title", "author__country__name", Column("count", label="How many"), "amount"],
        labels={"amount": "Sum"},
    )
    assert [c.label for c in columns] == [
        "Record title",
        "Author country country name",
        "How many",
        "Sum",
    ]


def test_choices_display_maps_labels():
    (column,) = resolve_columns(Record.objects.all(), [Column("status", choices_display=True)])
    assert column.kind == kinds.TEXT
    assert dict(column.choices) == {"d": "Draft", "p": "Published"}


def test_annotations():
    queryset = Author.objects.annotate(n=Count("records"), shout=F("name"))
    n, shout = resolve_columns(queryset, ["n", "shout"])
    assert (n.kind, n.label) == (kinds.INTEGER, "N")
    assert shout.kind == kinds.TEXT


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (["missing"], "Cannot export 'missing' from testapp.Record"),
        (["title__name"], "is not a relation"),
        (["tags"], "to-many relation"),
        (["tags__name"], "to-many relation"),
        ([], "at least one field"),
        ([42], "must be strings or Column"),
    ],
)
def test_errors(fields, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        resolve_columns(Record.objects.all(), fields)


def test_reverse_to_many_from_author_is_refused():
    with pytest.raises(ImproperlyConfigured, match="to-many"):
        resolve_columns(Author.objects.all(), ["records__title"])


@pytest.mark.parametrize("name", ["__str__", "author__str__"])
def test_str_is_refused_with_what_to_export_instead(name):
    with pytest.raises(ImproperlyConfigured, match=r"__str__\(\) is computed in Python") as info:
        resolve_columns(Record.objects.all(), ["id", name])
    assert f"Cannot export {name!r} from testapp.Record" in str(info.value)
    assert "annotate the queryset" in str(info.value)


@pytest.mark.parametrize("name", ["title__", "author____name", "__title"])
def test_a_lookup_with_an_empty_part_is_refused_as_such(name):
    with pytest.raises(ImproperlyConfigured, match="one is empty"):
        resolve_columns(Record.objects.all(), [name])


@pytest.mark.parametrize(
    ("sql", "count"),
    [
        ("SELECT 1", 0),
        ("a BETWEEN %s AND %s", 2),
        ("a LIKE '%%' || %s || '%%'", 1),
        ("a LIKE '%%s'", 0),  # a literal "%s"
        ("a LIKE '%%%s'", 1),  # a literal "%", then a placeholder
        ("a = %(name)s", None),
    ],
)
def test_count_placeholders(sql, count):
    assert count_placeholders(sql) == count


@pytest.mark.django_db
@pytest.mark.parametrize("alias", ["default", "sqlite"])
def test_a_range_given_text_is_refused_when_compiled(alias):
    """The admin's changelist passes ``id__range=123`` as text: three values, two placeholders.

    The driver noticed only when the query ran (a 500); compiling refuses it, on every backend.
    """
    queryset = Record.objects.using(alias).filter(id__range="123")
    columns = resolve_columns(queryset, ["id"])
    with pytest.raises(FiltersRefused) as refused:
        compile_query(queryset, columns, alias)
    assert refused.value.reason == "the query cannot be built from their values"
    # Two characters are two values: a query the driver takes (BETWEEN '1' AND '2').
    compile_query(Record.objects.using(alias).filter(id__range="12"), columns, alias)
