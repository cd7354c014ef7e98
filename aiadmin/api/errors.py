"""One JSON shape for every API error, whatever raised it.

    {"error": {"status": 404, "code": "not_found", "message": "...", "fields": {...}}}

`fields` is present only for validation errors: field name -> list of messages
(`non_field_errors` for errors of the request as a whole).
"""

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

logger = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def error_body(status_code, code, message, fields=None):
    error = {"status": status_code, "code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return {"error": error}


def _code_of(exc):
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    return exc.default_code


def api_exception_handler(exc, context):
    """REST_FRAMEWORK["EXCEPTION_HANDLER"]: every error in the one shape."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*(exc.args or ("Not found.",)))
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()

    if not isinstance(exc, exceptions.APIException):
        view = context.get("view")
        logger.exception("unhandled error in %s", type(view).__name__ if view else "API")
        set_rollback()
        return Response(
            error_body(500, "server_error", "Internal server error."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = f"{exc.wait:.0f}"

    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        body = error_body(exc.status_code, "invalid", _first_message(fields), fields)
    else:
        body = error_body(exc.status_code, _code_of(exc), str(exc.detail))
    set_rollback()
    return Response(body, status=exc.status_code, headers=headers)


def _first_message(fields):
    """A one-line summary of the first field error ('to: not a phone number')."""
    for name, messages in fields.items():
        first = messages[0] if isinstance(messages, list) and messages else messages
        if isinstance(first, dict):
            return f"{name}: {_first_message(first)}"
        return str(first) if name == "non_field_errors" else f"{name}: {first}"
    return "Invalid input."


@csrf_exempt  # a 404 for any method: no CSRF failure page (HTML) in its place
def api_not_found(request, *args, **kwargs):
    """Any path under /api/v1/ that matches no endpoint: a JSON 404, not an HTML page."""
    return JsonResponse(
        error_body(404, "not_found", f"No API endpoint at {request.path}."), status=404
    )
