"""The ASGI handler for HTTP: Django's, plus the length of a chunked body.

A request sent with `Transfer-Encoding: chunked` has no Content-Length. daphne
decodes the chunks and passes the whole body on, still without that header;
Django then reports no length and DRF reads the body as empty (the API answered
"to: This field is required." to a complete body, and a body of optional fields
would have been taken for defaults). By the time Django builds the request the
ASGI handler has buffered the body (a spooled temporary file), so its length is
known: it is added as the Content-Length header, and every limit keyed on the
length (API_MAX_BODY_BYTES, DATA_UPLOAD_MAX_MEMORY_SIZE) applies as usual.
"""

import os

from django.core.handlers.asgi import ASGIHandler


class BodyLengthASGIHandler(ASGIHandler):
    def create_request(self, scope, body_file):
        headers = scope.get("headers") or []
        if not any(name.lower() == b"content-length" for name, _ in headers):
            size = body_file.seek(0, os.SEEK_END)
            body_file.seek(0)
            if size:
                length = (b"content-length", str(size).encode())
                scope = {**scope, "headers": [*headers, length]}
        return super().create_request(scope, body_file)
