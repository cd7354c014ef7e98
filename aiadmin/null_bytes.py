"""A NUL character anywhere in a request's path, query or form is a 400.

PostgreSQL text cannot hold NUL: a query that compares a column with such a
value fails in the database, and Django's admin lets that error through as a
500 (an object id in the URL, a list filter's value, an autocomplete term, an
action's selected ids). No URL, filter or admin form of ours has a use for NUL,
so it is refused before any view runs: as a plain 400 page, or in the API's one
error shape under /api/. JSON bodies are not read here; DRF's fields refuse
NUL themselves ("Null characters are not allowed.").
"""

from django.http import HttpResponseBadRequest, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from aiadmin.api.no_store import API_PREFIX

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MESSAGE = "The request contains a NUL character."


def _has_nul(querydict):
    return any("\x00" in key or any("\x00" in value for value in values)
               for key, values in querydict.lists())


class RefuseNullBytesMiddleware(MiddlewareMixin):
    def process_request(self, request):
        is_api = request.path_info.startswith(API_PREFIX)
        suspicious = "\x00" in request.path_info or _has_nul(request.GET)
        if not suspicious and not is_api and request.method == "POST":
            if request.content_type in FORM_TYPES:
                suspicious = _has_nul(request.POST)
        if not suspicious:
            return None
        if is_api:
            from aiadmin.api.errors import error_body  # DRF imports settings: not at load time

            return JsonResponse(error_body(400, "invalid", MESSAGE), status=400)
        return HttpResponseBadRequest(MESSAGE)
