"""Cursor pagination: stable under inserts, opaque cursors, bad cursor = 400.

A cursor is base64 of `o=<offset>&r=<reverse>&p=<position>`; DRF checks the
offset and the reverse flag but passes the position straight into the query
(`id < 'abc'`: a 500). Every ordering here is by id, so a position must look
like one (what `<id:...>` accepts in paths)."""

import re

from rest_framework import exceptions
from rest_framework.pagination import CursorPagination


class IdCursorPagination(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            cursor = None
            valid = False
        else:
            valid = (
                cursor is None
                or cursor.position is None
                or (re.fullmatch(r"[0-9]{1,18}", cursor.position) is not None)
            )
        if not valid:
            raise exceptions.ValidationError(
                {self.cursor_query_param: ["Invalid cursor: use the `next`/`previous` links."]}
            )
        return cursor

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is not None and not (
            re.fullmatch(r"[0-9]{1,4}", raw) and 1 <= int(raw) <= self.max_page_size
        ):
            raise exceptions.ValidationError(
                {
                    self.page_size_query_param: [
                        f"Must be a whole number from 1 to {self.max_page_size}."
                    ]
                }
            )
        return super().get_page_size(request)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"].update({"minimum": 1, "maximum": self.max_page_size})
        return parameters


class AscendingIdCursorPagination(IdCursorPagination):
    ordering = "id"
