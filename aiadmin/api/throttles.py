"""Rate limits per API key (per user for staff sessions, per address otherwise).

Rates come from REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] (set from the
environment in settings) and are read at request time, so a settings change
applies at once. A view picks its bucket with `throttle_scope` ("api" unless
it says otherwise; sending messages has its own, stricter "send" bucket).
Counters live in the "api_throttle" cache (Redis in production, so all web
processes share one budget per key).
"""

import logging

from django.conf import settings
from django.core.cache import caches
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from aiadmin.client_address import client_address
from companies.models import CompanyAPIKey

logger = logging.getLogger(__name__)


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
        self.cache = caches["api_throttle"]
        try:
            return super().allow_request(request, view)
        except Exception:  # the counter store is down: serve rather than fail every call
            logger.warning("API throttle store unavailable; not throttling", exc_info=True)
            return True

    def get_cache_key(self, request, view):
        if isinstance(request.auth, CompanyAPIKey):
            ident = f"key:{request.auth.pk}"
        elif request.user is not None and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"addr:{client_address(request)}"
        namespace = getattr(settings, "API_THROTTLE_NAMESPACE", "")
        return f"throttle:{namespace}:{self.scope}:{ident}"
