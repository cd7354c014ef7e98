"""A JSON parser with a size limit and a nesting limit.

DRF reads the request stream itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE
never applies to API bodies; this parser enforces settings.API_MAX_BODY_BYTES
(413 with a clear message).

Python's json module recurses once per nesting level: `[` * 60000 (well under
the size limit) raises RecursionError, a 500. Before parsing, one flat scan
measures the nesting depth (brackets inside strings do not count); deeper than
settings.API_MAX_JSON_DEPTH is a 400 parse error, and json never sees it.
"""

import io
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding

from .errors import PayloadTooLarge

# A whole JSON string (escapes included), or one bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)


def max_body_bytes():
    return settings.API_MAX_BODY_BYTES


def nesting_depth(text, limit):
    """The deepest nesting of arrays/objects in JSON text, counting stops past `limit`.
    Unbalanced or malformed text is left to the JSON parser to reject."""
    depth = deepest = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif token in "]}":
            depth -= 1
    return deepest


class LimitedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = max_body_bytes()
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        encoding = get_encoding(parser_context or {})
        try:
            text = body.decode(encoding)
        except UnicodeDecodeError:
            text = ""  # not text in that encoding: the JSON parser says so
        max_depth = settings.API_MAX_JSON_DEPTH
        if nesting_depth(text, max_depth) > max_depth:
            raise ParseError(f"The JSON body is nested deeper than {max_depth} levels.")
        return super().parse(io.BytesIO(body), media_type, parser_context)
