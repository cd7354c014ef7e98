"""`Cache-Control: no-store` on every response under /api/: data, errors (also
those raised before a view runs, and the JSON 404 of unknown paths), the schema.

API answers carry one tenant's data; a browser or a shared cache must not keep
them. A middleware, not a DRF hook, so that answers no DRF view produced are
covered too."""

from django.utils.deprecation import MiddlewareMixin  # sync and async, like Django's own

API_PREFIX = "/api/"


class NoStoreMiddleware(MiddlewareMixin):
    def process_response(self, request, response):
        if request.path_info.startswith(API_PREFIX):
            response["Cache-Control"] = "no-store"
        return response
