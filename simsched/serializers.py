"""Request fields that take JSON values as sent: a number is not text, text is not a number,
1 is not true. DRF's own fields coerce ("7" to 7, 7 to "7", "yes" to True) because they also
read HTML forms; this API reads JSON only, and its schema says `integer`, `string`, `boolean`.
The point parser (convergence.serializers) applies the same rules to single points and
batches.
"""

import math
import re

from rest_framework import serializers

ERR_NOT_TEXT = "Must be a string."
ERR_NOT_INTEGER = "Must be an integer."
ERR_NOT_BOOLEAN = "Must be true or false."
ERR_NOT_NUMBER = "Must be a finite number."
ERR_DECIMAL = (
    'Must be a decimal string of at most {whole} digits, a point and {places}, e.g. "{example}".'
)


class TextField(serializers.CharField):
    """A string, as sent: numbers and booleans are refused, not turned into text."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            raise serializers.ValidationError(ERR_NOT_TEXT, code="invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An integer, as sent: "7", 7.0 and true are refused."""

    def to_internal_value(self, data):
        if type(data) is not int:
            raise serializers.ValidationError(ERR_NOT_INTEGER, code="invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false, as sent: "yes", 1 and "false" are refused."""

    def to_internal_value(self, data):
        if type(data) is not bool:
            raise serializers.ValidationError(ERR_NOT_BOOLEAN, code="invalid")
        return data


class StrictFloatField(serializers.FloatField):
    """A finite JSON number: strings and booleans are refused."""

    def to_internal_value(self, data):
        if type(data) not in (int, float):
            raise serializers.ValidationError(ERR_NOT_NUMBER, code="invalid")
        try:
            finite = math.isfinite(float(data))
        except OverflowError:  # an integer too large for a float: 10**400
            finite = False
        if not finite:
            raise serializers.ValidationError(ERR_NOT_NUMBER, code="invalid")
        return super().to_internal_value(data)


class DecimalStringField(serializers.DecimalField):
    """Money and other exact amounts: a non-negative decimal string ("30.00"), as responses
    write them. A JSON number is refused (a float cannot carry cents exactly), and so is any
    other spelling DRF would read ("1e2", " 5", "-0"); the schema states the pattern."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.max_digits is None:  # a derived, read-only amount: nothing to read
            self._matches = re.compile(r"^\d+(?:\.\d+)?$").fullmatch
            self.message = ERR_NOT_NUMBER
            return
        whole = self.max_digits - self.decimal_places
        self.pattern = rf"^\d{{1,{whole}}}(?:\.\d{{1,{self.decimal_places}}})?$"
        self.message = ERR_DECIMAL.format(
            whole=whole, places=self.decimal_places, example="30." + "0" * self.decimal_places
        )
        self._matches = re.compile(self.pattern).fullmatch
        # drf-spectacular reads this override instead of its own (signed, blank-allowing) one.
        self._spectacular_annotation = {
            "field": {"type": "string", "format": "decimal", "pattern": self.pattern}
        }

    def to_internal_value(self, data):
        if not isinstance(data, str) or not self._matches(data):
            raise serializers.ValidationError(self.message, code="invalid")
        return super().to_internal_value(data)


# A ModelSerializer whose generated fields are the strict ones above. (A comment, not a
# docstring: drf-spectacular would show an inherited docstring as each component's description.)
class StrictModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        **{
            model_field: strict
            for model_field, field in serializers.ModelSerializer.serializer_field_mapping.items()
            for drf_field, strict in (
                (serializers.CharField, TextField),
                (serializers.IntegerField, StrictIntegerField),
                (serializers.BooleanField, StrictBooleanField),
                (serializers.FloatField, StrictFloatField),
                (serializers.DecimalField, DecimalStringField),
            )
            if field is drf_field
        },
    }
