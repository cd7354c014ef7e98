"""Strict JSON types for input serializers.

DRF turns `5` into `"5"` for a CharField and `"yes"` into True for a
BooleanField. An API documented as taking a string or a boolean should say
"wrong type" instead of guessing (the schema promises it, and schemathesis
checks it)."""

from collections.abc import Mapping

from rest_framework import serializers


class StrictTypesMixin:
    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            errors = {}
            for name, field in self.fields.items():
                value = data.get(name)
                if field.read_only or value is None:
                    continue
                if isinstance(field, serializers.CharField) and not isinstance(value, str):
                    errors[name] = ["Must be a string."]
                elif isinstance(field, serializers.BooleanField) and not isinstance(value, bool):
                    errors[name] = ["Must be true or false."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)
