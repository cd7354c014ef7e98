"""The `<id:...>` path converter: a database id (1 to 18 digits).

Django's `int` converter accepts any number of digits; an id beyond the
database's 64-bit integers then fails in the database (a 500) instead of
being a plain 404. Importing this module registers the converter once."""

from django.urls import register_converter

ID_MAX = 999_999_999_999_999_999


class IdConverter:
    regex = "[0-9]{1,18}"

    def to_python(self, value):
        return int(value)

    def to_url(self, value):
        return str(int(value))


register_converter(IdConverter, "id")  # its OpenAPI schema: PATH_CONVERTER_OVERRIDES
