"""Export formats and the registry that selects one by its ``format`` name."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from functools import lru_cache

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from django_streamexport.conf import DEFAULT_FORMATS, OPTIONAL_FORMATS, conf
from django_streamexport.exceptions import UnknownFormat
from django_streamexport.formats.base import ExportFormat

__all__ = [
    "ExportFormat",
    "default_format_classes",
    "format_classes_by_name",
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
            f"Unknown export format {str(name)[:40]!r}. Choose one of: "
            f"{', '.join(sorted(by_name))}."
        ) from None
