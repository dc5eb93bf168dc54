"""Export formats and the registry that selects one by its ``format`` name."""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _

from django_streamexport.columns import ResolvedColumn
from django_streamexport.conf import DEFAULT_FORMATS, OPTIONAL_FORMATS, conf
from django_streamexport.exceptions import UnknownFormat
from django_streamexport.formats.base import ExportFormat

__all__ = [
    "ExportFormat",
    "check_format_options",
    "default_format_classes",
    "format_classes_by_name",
    "format_option_names",
    "make_format",
    "select_format_class",
]


@lru_cache(maxsize=16)
def _import_formats(paths: tuple[str, ...]) -> tuple[type[ExportFormat], ...]:
    classes = []
    for path in paths:
        try:
            cls = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(f"Cannot import export format {path!r}: {exc}") from exc
        classes.append(cls)
    return tuple(classes)


def default_format_classes() -> Sequence[type[ExportFormat]]:
    """Return the format classes named by ``STREAMEXPORT_FORMATS``, in order.

    With the default setting, formats whose optional library is not installed
    (Parquet without pyarrow) are left out; check ``django_streamexport.I001`` says so.
    A format named in the setting must import, or ``ImproperlyConfigured`` is raised.
    """
    paths = tuple(conf.FORMATS)
    if paths == DEFAULT_FORMATS:
        paths = tuple(
            path
            for path in paths
            if path not in OPTIONAL_FORMATS or importlib.util.find_spec(OPTIONAL_FORMATS[path])
        )
    return _import_formats(paths)


def format_classes_by_name(classes: Iterable[type[ExportFormat]]) -> dict[str, type[ExportFormat]]:
    """Map each class's ``format`` name to the class.

    Raises ``ImproperlyConfigured`` for a class that is not an
    :class:`ExportFormat` or a name used twice.
    """
    by_name: dict[str, type[ExportFormat]] = {}
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, ExportFormat)) or not cls.format:
            raise ImproperlyConfigured(
                f"{cls!r} is not an ExportFormat subclass with a 'format' name."
            )
        if cls.format in by_name:
            raise ImproperlyConfigured(f"Two export formats are named {cls.format!r}.")
        by_name[cls.format] = cls
    return by_name


def select_format_class(
    classes: Iterable[type[ExportFormat]], name: str | None
) -> type[ExportFormat]:
    """Return the class among ``classes`` whose ``format`` is ``name`` (``None``: the first).

    Raises :class:`~django_streamexport.exceptions.UnknownFormat` (400), naming
    the formats offered, when none is called ``name``; ``ImproperlyConfigured``
    as :func:`format_classes_by_name` does.
    """
    by_name = format_classes_by_name(classes)
    if name is None and by_name:
        return next(iter(by_name.values()))
    try:
        return by_name[name]  # type: ignore[index]
    except KeyError:
        raise UnknownFormat(
            _("Unknown export format %(name)r. Choose one of: %(formats)s.")
            % {"name": str(name)[:40], "formats": ", ".join(sorted(by_name))}
        ) from None


def format_option_names(format_class: type[ExportFormat]) -> frozenset[str] | None:
    """Return the keyword options ``format_class(columns, ...)`` takes, or ``None`` for any.

    Read from the signature of its ``__init__``; ``None`` when it takes ``**kwargs``
    (the options cannot be known before it is called).
    """
    try:
        parameters = inspect.signature(format_class.__init__).parameters
    except (TypeError, ValueError):  # no signature to read
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    skipped = ("self", "columns")
    return frozenset(n for n, p in parameters.items() if p.kind in named and n not in skipped)


def _refused_options(format_class: type[ExportFormat], options: Iterable[str]) -> list[str]:
    accepted = format_option_names(format_class)
    return [] if accepted is None else [name for name in options if name not in accepted]


def _describe(format_class: type[ExportFormat]) -> str:
    accepted = format_option_names(format_class)
    takes = ", ".join(sorted(accepted)) if accepted else "none"
    return f"{format_class.__name__} (format {format_class.format!r}; its options: {takes})"


def make_format(
    format_class: type[ExportFormat],
    columns: Sequence[ResolvedColumn],
    options: Mapping[str, Any] | None = None,
    *,
    source: str = "format_options",
) -> ExportFormat:
    """Return ``format_class(columns, **options)``, refusing options the class does not take.

    Options are per format: CSV's ``delimiter`` means nothing to NDJSON.  Raises
    ``ImproperlyConfigured`` naming ``source`` (where the options came from), the format
    and the options it takes, instead of the ``TypeError`` of the call; the class's own
    errors (an invalid value) are raised as the class raises them.
    """
    options = dict(options or {})
    refused = _refused_options(format_class, options)
    if refused:
        raise ImproperlyConfigured(
            f"{source} gives {_describe(format_class)} options it does not take: "
            f"{', '.join(map(repr, refused))}. Options are per format: give them by format "
            "name, as in format_options = {'csv': {'delimiter': ';'}}."
        )
    return format_class(columns, **options)


def check_format_options(
    classes: Iterable[type[ExportFormat]],
    options_by_format: Mapping[str, Mapping[str, Any]] | None,
    *,
    source: str = "format_options",
) -> None:
    """Check options keyed by format name (``{"csv": {"delimiter": ";"}}``) against ``classes``.

    Every key must name an offered format and every option be one its class takes, so a
    mistake shows on the first export in any format, not only in the one it concerns.
    Raises ``ImproperlyConfigured`` naming ``source``.
    """
    if not options_by_format:
        return
    if not isinstance(options_by_format, Mapping):
        raise ImproperlyConfigured(
            f"{source} must map format names to options, such as {{'csv': {{'bom': True}}}}, "
            f"not {options_by_format!r}."
        )
    by_name = format_classes_by_name(classes)
    for name, options in options_by_format.items():
        if name not in by_name:
            raise ImproperlyConfigured(
                f"{source} has options for the format {name!r}, which is not offered "
                f"(offered: {', '.join(sorted(by_name))})."
            )
        if not isinstance(options, Mapping):
            raise ImproperlyConfigured(
                f"{source}[{name!r}] must be a dict of options, not {options!r}."
            )
        refused = _refused_options(by_name[name], options)
        if refused:
            raise ImproperlyConfigured(
                f"{source}[{name!r}] gives {_describe(by_name[name])} options it does not "
                f"take: {', '.join(map(repr, refused))}."
            )
