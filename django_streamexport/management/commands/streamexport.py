"""``manage.py streamexport``: write an export to a file or stdout over the web pipeline.

::

    python manage.py streamexport flights.Flight --format csv \\
        --fields id,carrier__name,origin__name,dest,dep_delay \\
        --filter origin=JFK --filter month__in=1,2 --output flights.csv

    python manage.py streamexport --view flights.views.FlightExport -f ndjson | gzip > f.gz

The export is planned by :func:`~django_streamexport.plan.build_plan`, from the
arguments, or from the export view named by ``--view`` (its queryset, fields, labels,
formats, database and options, exactly as the web serves them, for an anonymous user),
and written through :func:`~django_streamexport.sinks.write_to_file`, so the file holds
the same bytes as the web response.  A progress bar (rows, MB and MB/s, by
``tqdm``: ``pip install django-streamexport[cli]``) is drawn on stderr when
stderr is a terminal; never when piped, unless ``--progress``.

``--output`` (:func:`~django_streamexport.sinks.open_output_file`): ``-`` is standard
output; a regular file (or a new one; a symbolic link's target) is written as
``FILE.part`` and renamed into place when complete; a FIFO, a device or ``/dev/stdout``
is written straight.  Bad input is a ``CommandError`` (exit status 1, one line on
stderr, no traceback) before anything is written: the query is planned by the database
(``EXPLAIN``) first, and nothing is written until its first rows arrive.  A reader that
stops reading (``| head``) ends the command quietly, with exit status 0.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from typing import IO, Any

from django.apps import apps
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import FieldError, ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    models,
    transaction,
)
from django.db.models import Q
from django.http import HttpRequest, QueryDict
from django.utils.module_loading import import_string
from django.views import View

from django_streamexport.columns import compile_query
from django_streamexport.exceptions import ExportRequestError, RowLimitExceeded
from django_streamexport.plan import ExportPlan, build_plan
from django_streamexport.sinks import open_output_file, write_to_file
from django_streamexport.streaming import ExportStream
from django_streamexport.views import StreamingExportMixin

#: What building a queryset from ``--filter`` values can raise besides ``FieldError``:
#: a value the field refuses (``ValidationError``, ``ValueError``: ``year 99999 is out of
#: range``, ``OverflowError``, ``decimal.InvalidOperation``) or a lookup given the wrong
#: number of values.
FILTER_ERRORS = (FieldError, ValidationError, ValueError, TypeError, LookupError, ArithmeticError)


def first_line(exc: BaseException) -> str:
    """Return the first line of ``exc``'s message (drivers add ``LINE 1: ...`` and a caret)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def parse_filter(text: str) -> tuple[str, Any]:
    """Parse ``lookup=value`` into a ``filter()`` keyword argument.

    ``__in`` and ``__range`` values are split on commas; ``__isnull`` takes
    ``true``/``false``.  Raises ``CommandError`` for text without ``=``, a ``__range`` of
    other than two values, and bytes that are not text (undecodable in the locale).
    """
    try:
        text.encode()
    except UnicodeEncodeError as exc:  # bytes the locale could not decode (PEP 383)
        raise CommandError(
            f"--filter {text!r} holds bytes that are not text in the locale's encoding."
        ) from exc
    lookup, sep, value = text.partition("=")
    lookup = lookup.strip()
    if not sep or not lookup:
        raise CommandError(f"Malformed --filter {text!r}: expected lookup=value (origin=JFK).")
    if lookup.endswith("__range"):
        bounds = value.split(",")
        if len(bounds) != 2:
            raise CommandError(f"--filter {text!r}: __range takes two values, low,high.")
        return lookup, bounds
    if lookup.endswith("__in"):
        return lookup, value.split(",") if value else []
    if lookup.endswith("__isnull"):
        if value.lower() not in ("true", "false", "1", "0"):
            raise CommandError(f"--filter {text!r}: __isnull takes true or false.")
        return lookup, value.lower() in ("true", "1")
    return lookup, value


class Progress:
    """Report rows, MB and MB/s on stderr with ``tqdm``; a no-op without it.

    ``total`` (rows) gives the bar a percentage and an ETA: the planner's estimate
    (:func:`~django_streamexport.estimates.estimate_rows`) or, with ``--count``, an exact
    ``COUNT(*)``; ``None`` for a bar without one (SQLite, or the estimate failed).
    """

    def __init__(self, enabled: bool, stream: IO[str], total: int | None = None) -> None:
        self.bar: Any = None
        self.started = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(
                total=total, unit=" rows", unit_scale=True, file=stream, dynamic_ncols=True
            )

    def update(self, export: ExportStream) -> None:
        """Show ``export``'s rows and bytes so far."""
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
    #: The stream class: ``ExportStream``, or the ``--view``'s ``get_stream_class()``.
    stream_class: type[ExportStream] = ExportStream

    help = (
        "Stream a queryset as CSV, NDJSON, XLSX or JSON to a file or stdout, through the same "
        "pipeline as the export views (or through one export view's configuration with --view)."
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
        parser.add_argument(
            "--output",
            "-o",
            default="-",
            help="File to write (replaced when complete), a FIFO or device (written straight), "
            "or - (stdout, the default).",
        )
        parser.add_argument("--view", help="Dotted path of an export view to take settings from.")
        parser.add_argument("--database", help="Database alias to read from.")
        parser.add_argument(
            "--mode",
            choices=["cursor", "keyset"],
            help="Read rows by one server-side cursor or by keyset pages (default: the view's).",
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="Queue the export as a background job (django_streamexport.jobs) owned by "
            "--user, and print the job's id.",
        )
        parser.add_argument("--user", help="With --background: the username of the job's owner.")
        parser.add_argument(
            "--count",
            action="store_true",
            help="With the progress bar: count the rows first (an exact total; one COUNT(*) "
            "query) instead of the database planner's estimate.",
        )
        progress = parser.add_mutually_exclusive_group()
        progress.add_argument(
            "--progress", action="store_true", default=None, help="Always show progress."
        )
        progress.add_argument(
            "--no-progress", dest="progress", action="store_false", help="Never show progress."
        )

    # --- building the export ----------------------------------------------------

    def get_filters(self, options: dict[str, Any]) -> list[Q]:
        """Return one ``Q`` per ``--filter``, all applied (AND), repeated lookups included."""
        return [Q(parse_filter(text)) for text in options["filter"]]

    def get_view(self, options: dict[str, Any]) -> StreamingExportMixin:
        """Return the ``--view`` export view, set up for an anonymous GET with ``--format``.

        The request is a plain ``HttpRequest``: the view's hooks read its query string
        (``?format=``) and user as they would on the web.
        """
        try:
            view_class = import_string(options["view"])
        except ImportError as exc:
            raise CommandError(f"Cannot import the view {options['view']!r}: {exc}") from exc
        if not (
            isinstance(view_class, type)
            and issubclass(view_class, StreamingExportMixin)
            and issubclass(view_class, View)
        ):
            raise CommandError(
                f"{options['view']!r} is not an export view (a View with StreamingExportMixin)."
            )
        view = view_class()
        request = HttpRequest()
        request.method = "GET"
        query = QueryDict(mutable=True)
        if options["format"]:
            query[view.format_query_param] = options["format"]
        request.GET = query  # type: ignore[assignment]  # a plain request may set it
        request.user = AnonymousUser()  # exports scoped per user see an anonymous user
        view.setup(request)
        return view

    def get_plan(self, options: dict[str, Any]) -> ExportPlan:
        """Return the plan the arguments describe; raise ``CommandError`` for bad arguments."""
        filters = self.get_filters(options)
        overrides: dict[str, Any] = {}
        if options["database"]:
            overrides["using"] = options["database"]
        if options["mode"]:
            overrides["mode"] = options["mode"]
        fields = None
        if options["fields"]:
            fields = [name.strip() for name in options["fields"].split(",") if name.strip()]
            if not fields:
                raise CommandError("--fields names no field: --fields id,name,...")
        try:
            if options["view"]:
                if options["model"]:
                    raise CommandError("Give either a model or --view, not both.")
                view = self.get_view(options)
                queryset = view.get_queryset().filter(*filters)
                if fields is not None:
                    view.export_fields = fields
                columns = view.get_columns(queryset)
                self.stream_class = view.get_stream_class()
                kwargs = {**view.get_export_plan_kwargs(), "user": None, **overrides}
                return build_plan(
                    queryset, columns=columns, export_format=view.get_format(columns), **kwargs
                )
            if not options["model"]:
                raise CommandError("Name a model (app_label.ModelName) or an export --view.")
            if fields is None:
                raise CommandError("--fields is required with a model: --fields id,name,...")
            model = self.get_model(options["model"])
            return build_plan(
                model._default_manager.filter(*filters),
                fields=fields,
                format=options["format"],
                **overrides,
            )
        except (ExportRequestError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        except FILTER_ERRORS as exc:
            raise CommandError(f"Invalid --filter: {exc}") from exc

    def get_model(self, label: str) -> type[models.Model]:
        """Return the model named ``app_label.ModelName``."""
        try:
            return apps.get_model(label)
        except (LookupError, ValueError) as exc:
            raise CommandError(
                f"Unknown model {label!r}: give app_label.ModelName ({exc})."
            ) from exc

    def check_query(self, plan: ExportPlan) -> None:
        """Have the database plan the export's query (``EXPLAIN``) before anything is written.

        Compiling refuses what Django can check; planning, what only the database can (a
        regular expression PostgreSQL cannot compile: ``tailnum__regex=(``, parameters
        the driver cannot bind), without reading a row.  Runs in a transaction of its
        own (a savepoint inside the caller's), so a refusal leaves the caller's intact.
        Raises ``CommandError``.  What fails only on reading rows still fails before the
        first byte: ``write_to_file()`` writes nothing until the first rows arrive.
        """
        try:
            query = compile_query(plan.queryset, plan.columns, plan.using)
        except FILTER_ERRORS as exc:
            raise CommandError(f"Invalid --filter: {exc}") from exc
        connection = connections[plan.using]
        if query.empty or not connection.features.supports_explaining_query_execution:
            return
        try:
            with transaction.atomic(using=plan.using), connection.cursor() as cursor:
                cursor.execute(f"{connection.ops.explain_query_prefix()} {query.sql}", query.params)
        except (OperationalError, InterfaceError) as exc:
            raise CommandError(
                f"The database {plan.using!r} cannot be reached: {first_line(exc)}"
            ) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"The database refused the export's query: {first_line(exc)}"
            ) from exc

    def get_stream(self, plan: ExportPlan, stream_class: type[ExportStream]) -> ExportStream:
        """Return the stream of ``plan``; its reader compiles the query (bad filters here)."""
        try:
            return stream_class(plan)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        except FILTER_ERRORS as exc:
            raise CommandError(f"Invalid --filter: {exc}") from exc

    # --- writing it -------------------------------------------------------------

    def handle(self, *args: Any, **options: Any) -> None:
        if options["background"]:
            return self.queue_job(options)
        if options["user"]:
            raise CommandError("--user goes with --background.")
        output = options["output"]
        if not output:
            raise CommandError("--output is empty: name a file, or - for standard output.")
        plan = self.get_plan(options)
        self.check_query(plan)
        stream = self.get_stream(plan, self.stream_class)
        show = options["progress"]
        if show is None:
            show = sys.stderr.isatty()
        progress = Progress(show, sys.stderr, self.get_total(plan, options) if show else None)
        try:
            if output == "-":
                self.write_stdout(stream, progress)
            else:
                self.write_file(stream, output, progress)
        except BrokenPipeError:
            # The reader stopped reading (``| head``): end quietly, as Unix tools do.
            return
        except RowLimitExceeded as exc:
            raise CommandError(
                f"The export has more rows than its limit of {exc.limit} and was stopped."
            ) from exc
        except DatabaseError as exc:
            raise CommandError(
                f"The export failed after {stream.rows} rows: {first_line(exc)}"
            ) from exc
        finally:
            stream.close()
            progress.close()
        if output != "-" and options["verbosity"] > 0:
            self.stderr.write(f"Wrote {stream.rows} rows, {stream.bytes} bytes to {output}.")

    def get_total(self, plan: ExportPlan, options: dict[str, Any]) -> int | None:
        """Return the rows the progress bar expects: ``--count``'s exact count, else the
        planner's estimate (PostgreSQL; ``None`` elsewhere), both capped at ``max_rows``."""
        if options.get("count"):
            total = plan.queryset.using(plan.using).count()
            return min(total, plan.max_rows) if plan.max_rows is not None else total
        from django_streamexport.estimates import estimate_rows

        return estimate_rows(plan)

    def queue_job(self, options: dict[str, Any]) -> None:
        """Queue the export as a job of ``--user`` and print its id (one line on stdout).

        The job records these options and rebuilds the plan with them when it runs; its
        file goes to ``STREAMEXPORT_JOBS_STORAGE``.  ``--output`` does not apply.
        """
        if not apps.is_installed("django_streamexport.jobs"):
            raise CommandError("--background needs 'django_streamexport.jobs' in INSTALLED_APPS.")
        if options["output"] != "-":
            raise CommandError("--background writes to the jobs' storage, not to --output.")
        if not options["user"]:
            raise CommandError("--background needs --user USERNAME: the job's owner.")
        from django.contrib.auth import get_user_model

        from django_streamexport.estimates import estimate_rows
        from django_streamexport.jobs.runner import queue_export_job
        from django_streamexport.jobs.sources import describe_command

        user_model = get_user_model()
        try:
            user = user_model._default_manager.get_by_natural_key(options["user"])
        except user_model.DoesNotExist:
            raise CommandError(f"No user {options['user']!r}.") from None
        plan = self.get_plan(options)
        self.check_query(plan)  # refuse what the database refuses before queueing
        job = queue_export_job(
            user=user,
            source=describe_command(options),
            format=plan.format.format,
            filename=plan.filename,
            rows_estimate=estimate_rows(plan),
        )
        self.stdout.write(str(job.pk))

    def write_stdout(self, stream: ExportStream, progress: Progress) -> None:
        """Write the export to standard output: bytes to its binary buffer, if it has one.

        ``call_command(stdout=StringIO())`` gives a text stream: it gets decoded text.
        When the reader closes the pipe, its descriptor is pointed at ``os.devnull``
        before ``BrokenPipeError`` propagates, so flushing it at exit cannot fail again
        (Python docs, "Note on SIGPIPE").
        """
        target: IO[bytes] | None = getattr(self.stdout, "buffer", None)  # OutputWrapper delegates
        if target is not None:
            try:
                write_to_file(stream, target, progress=progress.update)
                target.flush()
            except BrokenPipeError:
                _to_devnull(target)
                raise
            return
        charset = stream.format.charset
        if not charset:
            raise CommandError(
                f"The {stream.format.format} format is binary and this output takes text: "
                "write it to a file with --output."
            )
        text = _TextSink(self.stdout, charset)
        write_to_file(stream, text, progress=progress.update)

    def write_file(self, stream: ExportStream, path: str, progress: Progress) -> None:
        """Write the export to ``path`` with :func:`~django_streamexport.sinks.open_output_file`.

        A regular file is replaced only once the export is complete; a FIFO or a device
        is written straight.  Raises ``CommandError`` when ``path`` cannot be written.
        """
        try:
            with open_output_file(path) as file:
                write_to_file(stream, file, progress=progress.update)
        except BrokenPipeError:
            raise
        except OSError as exc:
            if stream.outcome == "failed":
                raise  # the export's own error, not the file's
            reason = exc.strerror or str(exc)
            if stream.outcome is None:
                raise CommandError(f"Cannot write {path!r}: {reason}.") from exc
            raise CommandError(
                f"Writing {path!r} failed after {stream.rows} rows: {reason}."
            ) from exc


def _to_devnull(file: Any) -> None:
    """Point ``file``'s descriptor at ``os.devnull``, if it has one."""
    try:
        descriptor = file.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)


class _TextSink:
    """A binary ``write()`` onto a text stream: each chunk decoded with ``charset``."""

    def __init__(self, out: Any, charset: str) -> None:
        self._out = out
        self._decoder = codecs.getincrementaldecoder(charset)()

    def write(self, data: bytes) -> None:
        self._out.write(self._decoder.decode(data), ending="")
