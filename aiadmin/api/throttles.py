"""Rate limits per API key (per user for staff sessions, per address otherwise).

Rates come from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] (set from the
environment in settings) and are read at request time, so a settings change
applies at once. A view picks its bucket with `throttle_scope` ("api" unless
it says otherwise; sending messages has its own, stricter "send" bucket).
"""

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from companies.models import CompanyAPIKey


class TenantRateThrottle(SimpleRateThrottle):
    default_scope = "api"

    def __init__(self):
        pass  # the rate depends on the view; resolved in allow_request

    def allow_request(self, request, view):
        self.scope = getattr(view, "throttle_scope", None) or self.default_scope
        self.rate = api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        if isinstance(request.auth, CompanyAPIKey):
            ident = f"key:{request.auth.pk}"
        elif request.user is not None and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"addr:{self.get_ident(request)}"
        return f"throttle:{self.scope}:{ident}"
