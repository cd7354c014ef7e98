"""A JSON parser with a size limit.

DRF reads the request stream itself, so Django's DATA_UPLOAD_MAX_MEMORY_SIZE
never applies to API bodies; this parser enforces settings.API_MAX_BODY_BYTES
(413 with a clear message).
"""

import io

from django.conf import settings
from rest_framework.parsers import JSONParser

from .errors import PayloadTooLarge


def max_body_bytes():
    return settings.API_MAX_BODY_BYTES


class LimitedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        limit = max_body_bytes()
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        return super().parse(io.BytesIO(body), media_type, parser_context)
