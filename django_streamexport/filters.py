"""Deprecated alias of :mod:`django_streamexport.contrib.django_filter`.

The django-filter integration moved to ``django_streamexport.contrib``, next to
the other integrations with optional libraries.  Import it from there::

    from django_streamexport.contrib.django_filter import FilteredExportView

This module re-exports the same classes (``FilterSetExportMixin``,
``FilteredExportView``, ``InvalidFilters``) and emits a ``DeprecationWarning``
when it is first imported.  It will be removed in a future release.
"""

from __future__ import annotations

import warnings

from django_streamexport.contrib.django_filter import (
    FilteredExportView,
    FilterSetExportMixin,
    InvalidFilters,
)

__all__ = ["FilterSetExportMixin", "FilteredExportView", "InvalidFilters"]

warnings.warn(
    "django_streamexport.filters is deprecated; import from "
    "django_streamexport.contrib.django_filter instead "
    "(from django_streamexport.contrib.django_filter import FilteredExportView).",
    DeprecationWarning,
    stacklevel=2,
)
