"""Models covering every value kind the formats convert."""

import uuid

from django.db import models


class Country(models.Model):
    name = models.CharField("country name", max_length=100)


class Author(models.Model):
    name = models.CharField(max_length=100)
    country = models.ForeignKey(Country, null=True, on_delete=models.SET_NULL)


class Record(models.Model):
    class Status(models.TextChoices):
        DRAFT = "d", "Draft"
        PUBLISHED = "p", "Published"

    title = models.CharField("record title", max_length=200, blank=True)
    body = models.TextField(null=True, blank=True)
    status = models.CharField(max_length=1, choices=Status.choices, default=Status.DRAFT)
    count = models.IntegerField(null=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2, null=True)
    ratio = models.FloatField(null=True)
    flag = models.BooleanField(null=True)
    created = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    at = models.TimeField(null=True)
    took = models.DurationField(null=True)
    key = models.UUIDField(default=uuid.uuid4)
    data = models.JSONField(null=True)
    author = models.ForeignKey(Author, null=True, on_delete=models.SET_NULL, related_name="records")

    class Meta:
        ordering = ["id"]


class Tag(models.Model):
    """A to-many relation: exporting through it would repeat rows."""

    record = models.ForeignKey(Record, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=20)
