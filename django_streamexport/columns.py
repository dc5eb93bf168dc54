"""Turn declared export fields into resolved columns.

An export field is a lookup path as accepted by ``QuerySet.values_list()``:
a model field (``"dep_delay"``), a forward relation followed to any depth
(``"carrier__name"``, ``"plane__manufacturer"``) or an annotation on the
queryset (``"delay_hours"``).  Each resolves to a :class:`ResolvedColumn`
carrying the header label, the lookup, and the *kind* of value the database
returns, which is what the formats use to pick a converter.

Only forward many-to-one and one-to-one relations may be followed: a reverse or
many-to-many lookup would repeat each row once per related object.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import (
    EmptyResultSet,
    FieldDoesNotExist,
    ImproperlyConfigured,
    ValidationError,
)
from django.db import models
from django.db.models.constants import LOOKUP_SEP
from django.utils.encoding import force_str
from django.utils.text import capfirst

from django_streamexport.exceptions import UNBUILDABLE, FiltersRefused

#: Value kinds.  Formats map each kind to a converter (or to none, when the
#: value the database driver returns is already what the format writes).
TEXT = "text"
INTEGER = "integer"
FLOAT = "float"
DECIMAL = "decimal"
BOOLEAN = "boolean"
DATETIME = "datetime"
DATE = "date"
TIME = "time"
DURATION = "duration"
UUID = "uuid"
JSON = "json"
BINARY = "binary"
OTHER = "other"

_KIND_BY_INTERNAL_TYPE = {
    "AutoField": INTEGER,
    "BigAutoField": INTEGER,
    "SmallAutoField": INTEGER,
    "IntegerField": INTEGER,
    "BigIntegerField": INTEGER,
    "SmallIntegerField": INTEGER,
    "PositiveIntegerField": INTEGER,
    "PositiveBigIntegerField": INTEGER,
    "PositiveSmallIntegerField": INTEGER,
    "FloatField": FLOAT,
    "DecimalField": DECIMAL,
    "BooleanField": BOOLEAN,
    "NullBooleanField": BOOLEAN,
    "DateTimeField": DATETIME,
    "DateField": DATE,
    "TimeField": TIME,
    "DurationField": DURATION,
    "UUIDField": UUID,
    "JSONField": JSON,
    "BinaryField": BINARY,
    "CharField": TEXT,
    "TextField": TEXT,
    "EmailField": TEXT,
    "SlugField": TEXT,
    "URLField": TEXT,
    "FilePathField": TEXT,
    "FileField": TEXT,
    "ImageField": TEXT,
    "GenericIPAddressField": TEXT,
    "IPAddressField": TEXT,
}


@dataclass(frozen=True)
class Column:
    """Declare one export column with options beyond its lookup.

    Use it in ``export_fields`` in place of a plain string::

        export_fields = ["id", Column("status", label="State", choices_display=True)]

    ``name`` is the lookup path and the NDJSON key.  ``label`` overrides the
    CSV header (default: the field's ``verbose_name``).  ``choices_display``
    exports a choices field's human-readable label instead of its stored value.
    ``escape_formulas`` forces CSV formula escaping on (``True``) or off
    (``False``) for this column; by default it follows
    ``STREAMEXPORT_CSV_ESCAPE_FORMULAS`` for text columns only.
    """

    name: str
    label: str | None = None
    choices_display: bool = False
    escape_formulas: bool | None = None


#: What ``export_fields`` may contain.
ExportField = str | Column


@dataclass(frozen=True)
class ResolvedColumn:
    """A column resolved against a queryset: what to read and how to write it."""

    name: str
    label: str
    lookup: str
    kind: str
    #: Stored value -> display label, for ``choices_display`` columns.
    choices: Mapping[Any, str] | None = None
    #: ``True``/``False`` forced by the declaration, ``None`` for the default.
    escape_formulas: bool | None = None
    model_field: models.Field | None = field(default=None, compare=False, repr=False)


def kind_of_field(model_field: models.Field) -> str:
    """Return the value kind of a model field (one of this module's constants).

    Relations report the kind of the field they point to, since
    ``values_list("carrier")`` returns the related primary key.
    """
    if model_field.is_relation and model_field.target_field is not None:  # type: ignore[attr-defined]
        return kind_of_field(model_field.target_field)  # type: ignore[attr-defined]
    return _KIND_BY_INTERNAL_TYPE.get(model_field.get_internal_type(), OTHER)


def _walk_lookup(model: type[models.Model], name: str) -> tuple[list[models.Field], models.Field]:
    """Follow ``name`` through forward relations; return the path and the final field.

    Raises ``FieldDoesNotExist`` for an unknown part and ``ValueError`` for a
    relation that cannot be followed without repeating rows.
    """
    parts = name.split(LOOKUP_SEP)
    path: list[models.Field] = []
    current = model
    for index, part in enumerate(parts):
        model_field = current._meta.get_field(part)
        if model_field.many_to_many or model_field.one_to_many:
            raise ValueError(
                f"{name!r} follows the to-many relation {part!r}; only forward foreign keys "
                "and one-to-one relations can be exported (one row per object)."
            )
        path.append(model_field)  # type: ignore[arg-type]
        if index < len(parts) - 1:
            if not model_field.is_relation:
                raise FieldDoesNotExist(f"{part!r} in {name!r} is not a relation")
            current = model_field.related_model  # type: ignore[assignment]
    return path, path[-1]


def _not_a_lookup(name: str) -> str | None:
    """Return why ``name`` cannot be a lookup (``"__str__"``, an empty part), or ``None``."""
    if name.endswith("__str__"):  # "__str__", "author__str__"
        return (
            "__str__() is computed in Python, and an export is one database query. Export "
            'the fields it is built from (such as "name" or "author__name"), or annotate the '
            "queryset with the text (Concat(...)) and export the annotation."
        )
    if "" in name.split(LOOKUP_SEP):
        return f"a lookup's parts are field names joined by {LOOKUP_SEP!r}, and one is empty."
    return None


def default_label(path: Sequence[models.Field]) -> str:
    """Return the header label for a lookup path.

    A plain field gives its ``verbose_name`` (``"Departure delay"``); a related
    lookup joins the verbose names along the path (``carrier__name`` gives
    ``"Carrier name"``) so that ``origin__name`` and ``dest__name`` stay
    distinguishable.
    """
    names = [force_str(getattr(f, "verbose_name", None) or f.name) for f in path]
    return capfirst(" ".join(names))


def resolve_columns(
    queryset: models.QuerySet,
    export_fields: Iterable[ExportField],
    labels: Mapping[str, str] | None = None,
) -> list[ResolvedColumn]:
    """Resolve ``export_fields`` against ``queryset``'s model and annotations.

    ``labels`` maps a field name to its header label and wins over both a
    :class:`Column`'s own label and the default.  Returns one
    :class:`ResolvedColumn` per field, in order.

    Raises ``ImproperlyConfigured`` naming the field for an unknown lookup, a
    to-many lookup, ``"__str__"`` (computed in Python; the message says what to export
    instead), a duplicate name, or ``choices_display`` on a field without choices.
    """
    labels = labels or {}
    annotations = queryset.query.annotations
    model = queryset.model
    columns: list[ResolvedColumn] = []
    seen: set[str] = set()
    for declared in export_fields:
        column = Column(declared) if isinstance(declared, str) else declared
        if not isinstance(column, Column) or not isinstance(column.name, str):
            raise ImproperlyConfigured(
                f"Export fields must be strings or Column instances, not {declared!r}."
            )
        name = column.name
        if name in seen:
            raise ImproperlyConfigured(f"Export field {name!r} is declared twice.")
        seen.add(name)
        choices = None
        model_field: models.Field | None = None
        if name in annotations:
            output_field = getattr(annotations[name], "output_field", None)
            kind = kind_of_field(output_field) if output_field is not None else OTHER
            label = capfirst(name.replace("_", " "))
            model_field = output_field
        else:
            refusal = _not_a_lookup(name)
            if refusal is not None:
                raise ImproperlyConfigured(
                    f"Cannot export {name!r} from {model._meta.label}: {refusal}"
                )
            try:
                path, model_field = _walk_lookup(model, name)
            except (FieldDoesNotExist, ValueError) as exc:
                raise ImproperlyConfigured(
                    f"Cannot export {name!r} from {model._meta.label}: {exc}"
                ) from exc
            kind = kind_of_field(model_field)
            label = default_label(path)
        if column.choices_display:
            flatchoices = getattr(model_field, "flatchoices", None)
            if not flatchoices:
                raise ImproperlyConfigured(
                    f"Column {name!r} asks for choices_display, but {name!r} has no choices."
                )
            choices = {value: force_str(display) for value, display in flatchoices}
            kind = TEXT
        columns.append(
            ResolvedColumn(
                name=name,
                label=labels.get(name) or column.label or label,
                lookup=name,
                kind=kind,
                choices=choices,
                escape_formulas=column.escape_formulas,
                model_field=model_field,
            )
        )
    if not columns:
        raise ImproperlyConfigured("An export needs at least one field.")
    return columns


def values_queryset(
    queryset: models.QuerySet, columns: Sequence[ResolvedColumn], using: str
) -> models.QuerySet:
    """Return the ``values_list()`` of ``columns``' lookups on database ``using``.

    A ``DISTINCT`` queryset (the admin's changelist adds ``distinct()`` when a filter or
    search spans a to-many relation) also selects its primary key last, so ``DISTINCT``
    still keeps one row per object: over the exported values alone it would merge
    different objects whose exported values are equal.  :func:`compile_query` cuts that
    value off again.

    Raises ``ValueError`` for a queryset with ``prefetch_related()``, which an export
    (one query) cannot honour.
    """
    if getattr(queryset, "_prefetch_related_lookups", ()):
        raise ValueError("An export cannot use prefetch_related(); use values lookups.")
    lookups = [column.lookup for column in columns]
    query = queryset.query
    if query.distinct and not query.distinct_fields:
        lookups.append("pk")
    return queryset.using(using).values_list(*lookups)


@dataclass
class CompiledQuery:
    """The SQL of an export's ``values_list()`` query and how to finish its rows.

    ``sql`` and ``params`` are what ``QuerySet.iterator()`` would run (``%s``
    placeholders); a SQL row holds the values of the export's ``width`` columns first,
    in column order.  :meth:`finish` turns a batch of rows as the driver returns them
    into rows of exactly the export's columns, in order, with Django's converters
    (``from_db_value()``, backend converters such as SQLite's decimals) applied, as
    ``SQLCompiler.results_iter()`` does.
    ``converted`` names the columns whose values Django converts after reading.
    ``empty`` is true when Django knows the query matches no rows (``EmptyResultSet``):
    there is no SQL to run.
    """

    sql: str
    params: tuple[Any, ...]
    width: int
    converted: list[str]
    empty: bool = False
    compiler: Any = field(default=None, repr=False)
    _converters: Any = field(default=None, repr=False)
    _composite: bool = False
    _extra: int | None = None
    _cut: int | None = None

    @property
    def needs_finishing(self) -> bool:
        """Say whether :meth:`finish` changes rows (else the driver's rows are final)."""
        return bool(self._converters or self._composite or self._extra or self._cut)

    def finish(self, batch: list[tuple]) -> list[tuple]:
        """Return ``batch`` (a list of SQL rows) as export rows; a no-op when nothing to do."""
        if self._extra is not None:
            extra = self._extra
            batch = [row[:extra] for row in batch]
        if self._composite:
            batch = list(self.compiler.results_iter(iter([batch]), tuple_expected=True))
        elif self._converters:
            converters = self._converters
            batch = list(map(tuple, self.compiler.apply_converters(batch, converters)))
        if self._cut is not None:
            cut = self._cut
            batch = [row[:cut] for row in batch]
        return batch


#: What Django's lookups raise while compiling a value they cannot use: ``ValueError``
#: (``__year__gt=99999``), ``IndexError`` (a ``__range`` of one value), ``TypeError``,
#: ``ArithmeticError`` (``OverflowError``, ``decimal.InvalidOperation``), ``ValidationError``.
COMPILE_ERRORS = (ValueError, TypeError, IndexError, ArithmeticError, ValidationError)


def as_sql(compiler: Any) -> tuple[str, tuple[Any, ...]]:
    """Return ``compiler.as_sql()``: the SQL and parameters of a query.

    Raises :class:`~django_streamexport.exceptions.FiltersRefused` (400) for
    :data:`COMPILE_ERRORS`: values that filters carried into the query and its lookups
    cannot compile; and for a query whose parameters do not match its placeholders (a
    lookup given a value of the wrong shape: the admin's changelist hands ``id__range``
    its text, and ``"123"`` is three values for ``BETWEEN %s AND %s``), which the
    driver would refuse only when the query runs.  ``EmptyResultSet`` and other errors
    (a ``FieldError`` of the code) propagate.
    """
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        raise
    except COMPILE_ERRORS as exc:
        raise FiltersRefused.from_error(exc) from exc
    placeholders = count_placeholders(sql)
    if params and placeholders is not None and placeholders != len(params):
        raise FiltersRefused(UNBUILDABLE)
    return sql, tuple(params)


def count_placeholders(sql: str) -> int | None:
    """Return how many ``%s`` placeholders Django's ``sql`` has, or ``None`` if it cannot tell.

    Django writes a query's placeholders ``%s`` on every backend and a literal ``%`` as
    ``%%`` (the DB-API's ``format`` paramstyle, PEP 249), so ``"a LIKE '%%' || %s"`` has
    one.  ``None`` for named placeholders (``%(name)s``, from raw SQL), which are not
    counted.
    """
    if "%(" in sql:
        return None
    return sql.replace("%%", "").count("%s")


def compile_query(
    queryset: models.QuerySet, columns: Sequence[ResolvedColumn], using: str
) -> CompiledQuery:
    """Compile the ``values_list()`` of ``columns`` on ``using`` into a :class:`CompiledQuery`.

    Compiled once per export, when its reader is chosen, before any response starts:
    what the query compiler refuses raises here, not mid-stream, as
    :class:`~django_streamexport.exceptions.FiltersRefused` (400) for a value a lookup
    cannot compile (:func:`as_sql`) and as itself otherwise (``FieldError``).  A query
    Django knows to match nothing (``EmptyResultSet``) gives ``empty=True``.  Raises
    ``ValueError`` for ``prefetch_related()``.
    """
    values = values_queryset(queryset, columns, using)
    width = len(columns)
    compiler = values.query.get_compiler(using=using)
    try:
        sql, params = as_sql(compiler)
    except EmptyResultSet:
        return CompiledQuery("", (), width, [], empty=True, compiler=compiler)
    # As SQLCompiler.results_iter(): the converters of the selected columns, and extra
    # ordering columns (DISTINCT with ORDER BY) cut off.
    selected = [s[0] for s in compiler.select[0 : compiler.col_count]]
    converters = compiler.get_converters(selected)
    composite = compiler.has_composite_fields(selected)
    extra = compiler.col_count if compiler.has_extra_select else None
    # The hidden primary key of a DISTINCT export (values_queryset()) comes last.
    cut = width if len(selected) > width else None
    converted = [column.name for at, column in enumerate(columns) if at in converters]
    return CompiledQuery(
        sql,
        tuple(params),
        width,
        converted,
        compiler=compiler,
        _converters=converters,
        _composite=composite,
        _extra=extra,
        _cut=cut,
    )
