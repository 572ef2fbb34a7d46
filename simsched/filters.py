"""The filter backends every API list uses (set once in settings)."""

from datetime import UTC

import django_filters
from django import forms
from rest_framework.filters import OrderingFilter


class StableOrderingFilter(OrderingFilter):
    """`?ordering=` by a field with repeated values (status, name) ends with the primary key,
    so pages neither repeat nor skip rows: SQL gives ties no order of their own."""

    def get_ordering(self, request, queryset, view):
        ordering = super().get_ordering(request, queryset, view)
        if ordering and not any(field.lstrip("-") in ("pk", "id") for field in ordering):
            ordering = [*ordering, "pk"]
        return ordering


ERR_DATETIME_RANGE = "Must be a date-time that exists in UTC (years 1 to 9999)."


class IntegerFilter(django_filters.NumberFilter):
    """An integer in [min_value, max_value]: 0.5 and 1e3 are refused (NumberFilter reads
    decimals), and so is a number no column holds; the schema states the bounds."""

    field_class = forms.IntegerField

    def __init__(self, *, min_value: int = 0, max_value: int = 2**31 - 1, **kwargs):
        kwargs.setdefault("min_value", min_value)
        kwargs.setdefault("max_value", max_value)
        super().__init__(**kwargs)
        self._spectacular_annotation = {
            "field": {"type": "integer", "minimum": min_value, "maximum": max_value}
        }


class UtcDateTimeField(django_filters.fields.IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        try:
            return value and value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise forms.ValidationError(ERR_DATETIME_RANGE, code="invalid") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time, refused with a 400 when it has no UTC equivalent (the database
    compares in UTC: converting it there was a 500)."""

    field_class = UtcDateTimeField
