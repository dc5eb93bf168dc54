"""``manage.py streamexport``: write an export to a file or stdout over the web pipeline.

::

    python manage.py streamexport flights.Flight --format csv \\
        --fields id,carrier__name,origin__name,dest,dep_delay \\
        --filter origin=JFK --filter month__in=1,2 --output flights.csv

    python manage.py streamexport --view flights.views.FlightExport -f ndjson | gzip > f.gz

The export is built by an export view: the one named by ``--view`` (its
queryset, fields, labels, formats and database, exactly as the web serves
them, so both give the same bytes) or a plain :class:`StreamingExportMixin`
configured from the arguments.  A progress bar (rows, MB and MB/s, by
``tqdm``: ``pip install django-streamexport[cli]``) is drawn on stderr when
stderr is a terminal; never when piped, unless ``--progress``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from django.apps import apps
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import FieldError, ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import models
from django.test import RequestFactory
from django.utils.module_loading import import_string

from django_streamexport.exceptions import ExportRequestError
from django_streamexport.streaming import ExportStream
from django_streamexport.views import StreamingExportMixin


def parse_filter(text: str) -> tuple[str, Any]:
    """Parse ``lookup=value`` into a ``filter()`` keyword argument.

    ``__in`` and ``__range`` values are split on commas; ``__isnull`` takes
    ``true``/``false``.  Raises ``CommandError`` for text without ``=``.
    """
    lookup, sep, value = text.partition("=")
    lookup = lookup.strip()
    if not sep or not lookup:
        raise CommandError(f"Malformed --filter {text!r}: expected lookup=value (origin=JFK).")
    if lookup.endswith(("__in", "__range")):
        return lookup, value.split(",") if value else []
    if lookup.endswith("__isnull"):
        if value.lower() not in ("true", "false", "1", "0"):
            raise CommandError(f"--filter {text!r}: __isnull takes true or false.")
        return lookup, value.lower() in ("true", "1")
    return lookup, value


class Progress:
    """Report rows, MB and MB/s on stderr with ``tqdm``; a no-op without it."""

    def __init__(self, enabled: bool, stream: IO[str]) -> None:
        self.bar: Any = None
        self.started = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(unit=" rows", unit_scale=True, file=stream, dynamic_ncols=True)

    def update(self, export: ExportStream) -> None:
        if self.bar is None:
            return
        self.bar.update(export.rows - self.bar.n)
        megabytes = export.bytes / 1e6
        rate = megabytes / max(1e-9, time.monotonic() - self.started)
        self.bar.set_postfix_str(f"{megabytes:.1f} MB, {rate:.1f} MB/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Command(BaseCommand):
    help = (
        "Stream a queryset as CSV or NDJSON to a file or stdout, through the same pipeline "
        "as the export views (or through one export view's configuration with --view)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", nargs="?", help="app_label.ModelName (not with --view).")
        parser.add_argument("--format", "-f", help="Format name (csv, ndjson); default: first.")
        parser.add_argument("--fields", help="Comma-separated lookups: id,carrier__name,...")
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="LOOKUP=VALUE",
            help="A filter() argument; repeat for more (AND). __in/__range split on commas.",
        )
        parser.add_argument("--output", "-o", default="-", help="File to write, or - (stdout).")
        parser.add_argument("--view", help="Dotted path of an export view to take settings from.")
        parser.add_argument("--database", help="Database alias to read from.")
        parser.add_argument(
            "--mode",
            choices=["cursor", "keyset"],
            help="Read rows by one server-side cursor or by keyset pages (default: the view's).",
        )
        progress = parser.add_mutually_exclusive_group()
        progress.add_argument(
            "--progress", action="store_true", default=None, help="Always show progress."
        )
        progress.add_argument(
            "--no-progress", dest="progress", action="store_false", help="Never show progress."
        )

    # --- building the export ----------------------------------------------------

    def get_view(self, options: dict[str, Any]) -> StreamingExportMixin:
        """Return an export view instance set up with a request for ``--format``."""
        if options["view"]:
            if options["model"]:
                raise CommandError("Give either a model or --view, not both.")
            try:
                view_class = import_string(options["view"])
            except ImportError as exc:
                raise CommandError(f"Cannot import the view {options['view']!r}: {exc}") from exc
            if not (isinstance(view_class, type) and issubclass(view_class, StreamingExportMixin)):
                raise CommandError(f"{options['view']!r} is not a StreamingExportMixin subclass.")
            view = view_class()
        else:
            if not options["model"]:
                raise CommandError("Name a model (app_label.ModelName) or an export --view.")
            if not options["fields"]:
                raise CommandError("--fields is required with a model: --fields id,name,...")
            view = StreamingExportMixin()
            view.model = self.get_model(options["model"])
        if options["fields"]:
            fields = [name.strip() for name in options["fields"].split(",") if name.strip()]
            view.export_fields = fields
        if options["database"]:
            view.using = options["database"]
        if options["mode"]:
            view.export_mode = options["mode"]
        query = {view.format_query_param: options["format"]} if options["format"] else {}
        request = RequestFactory().get("/", query)
        # Exports scoped per user see an anonymous user from the command line.
        request.user = AnonymousUser()
        view.request = request
        setattr(view, "args", ())  # noqa: B010 - as View.setup() sets them
        setattr(view, "kwargs", {})  # noqa: B010
        filters = dict(parse_filter(text) for text in options["filter"])
        if filters:
            original: Callable[[], models.QuerySet] = view.get_queryset

            def get_queryset() -> models.QuerySet:
                return original().filter(**filters)

            view.get_queryset = get_queryset  # type: ignore[method-assign]
        return view

    def get_model(self, label: str) -> type[models.Model]:
        try:
            return apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise CommandError(
                f"Unknown model {label!r}: give app_label.ModelName ({exc})."
            ) from exc

    def get_stream(self, view: StreamingExportMixin) -> ExportStream:
        try:
            return view.get_export_stream()
        except (ExportRequestError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        except (FieldError, ValidationError, ValueError, TypeError) as exc:
            raise CommandError(f"Invalid --filter: {exc}") from exc

    # --- writing it -------------------------------------------------------------

    def handle(self, *args: Any, **options: Any) -> None:
        view = self.get_view(options)
        stream = self.get_stream(view)
        show = options["progress"]
        if show is None:
            show = sys.stderr.isatty()
        progress = Progress(show, sys.stderr)
        output = options["output"]
        try:
            if output == "-":
                self.write_stdout(stream, progress)
            else:
                self.write_file(stream, output, progress)
        finally:
            stream.close()
            progress.close()
        if output != "-" and options["verbosity"] > 0:
            self.stderr.write(f"Wrote {stream.rows} rows, {stream.bytes} bytes to {output}.")

    def write_stdout(self, stream: ExportStream, progress: Progress) -> None:
        # Bytes go to the binary buffer; a text stream (call_command(stdout=StringIO()))
        # gets decoded text.
        out: IO[str] = self.stdout._out  # type: ignore[assignment]
        target: IO[bytes] | None = getattr(out, "buffer", None)
        for chunk in stream:
            if target is not None:
                target.write(chunk)
            else:
                out.write(chunk.decode(stream.format.charset or "utf-8"))
            progress.update(stream)
        if target is not None:
            target.flush()

    def write_file(self, stream: ExportStream, path: str, progress: Progress) -> None:
        # Write beside the target and rename at the end, so a failed export
        # never leaves a truncated file that looks complete.
        partial = f"{path}.part"
        try:
            with open(partial, "wb") as file:
                for chunk in stream:
                    file.write(chunk)
                    progress.update(stream)
            os.replace(partial, path)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
