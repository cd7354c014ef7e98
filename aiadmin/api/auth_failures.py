"""Failed authentication is throttled before it is answered.

Two budgets, both counted in the "api_throttle" cache (Redis in production, so
every web process counts into the same numbers), in fixed windows:

* per client address (aiadmin.client_address): wrong, unknown, revoked or expired
  API keys, and calls to an authenticated endpoint with no credentials at all.
  Over the limit the address gets 429 for every API-key or keyless call, before
  any key is checked (a right key from that address too, until the window ends).
* per API key (its prefix), whatever the address: wrong secrets for a real key.
  Over the limit a wrong secret for that prefix is answered 429 from every
  address -- but the key is checked first, so the right secret keeps working.
  Locking the key itself would let anyone who knows a prefix (it is not secret:
  the admin lists it, logs name it) cut its company off the API; guessing the
  secret (32 random characters) is hopeless anyway, so this budget is about load
  and a signal: crossing it is logged once per window, naming key and company.

Rates come from settings.API_AUTH_FAILURE_RATES ({"address": "10/min", "key":
"10/min"}), read at request time. If the store is unreachable, authentication
goes on unthrottled (logged), like the per-key rate limits.
"""

import logging
import math
import time

from django.conf import settings
from django.core.cache import caches
from rest_framework import exceptions

from aiadmin.client_address import client_address

logger = logging.getLogger(__name__)

MESSAGES = {
    "address": "Too many failed authentication attempts from this address.",
    "key": "Too many failed attempts with this API key.",
}


PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _rate(kind):
    """(failures allowed, window in seconds) from a DRF-style rate such as 10/min."""
    count, period = settings.API_AUTH_FAILURE_RATES[kind].split("/")
    return int(count), PERIODS[period[0]]


def _window(kind, ident, now):
    """(cache key, seconds left in the window, limit) for `ident`'s current window."""
    limit, period = _rate(kind)
    window = int(now // period)
    namespace = getattr(settings, "API_THROTTLE_NAMESPACE", "")
    key = f"authfail:{namespace}:{kind}:{ident}:{window}"
    return key, (window + 1) * period - now, limit, period


class AuthFailures:
    """The failure budgets of one request."""

    def __init__(self, request):
        self.address = client_address(request)
        self.cache = caches["api_throttle"]

    def refuse_if_address_blocked(self):
        refusal = self._over("address", self.address)
        if refusal is not None:
            raise refusal

    def failed(self, api_key=None):
        """Count one failure of this address, and of `api_key` (a real key given a
        wrong secret, or revoked or expired). Returns the 429 to answer with when
        that key's budget was already spent, else None (answer 401)."""
        refusal = self._over("key", api_key.prefix) if api_key is not None else None
        self._count("address", self.address, f"address {self.address}")
        if api_key is not None:
            self._count(
                "key",
                api_key.prefix,
                f"API key {api_key.prefix} ({api_key.name!r}) of company "
                f"{api_key.company.name!r} (id {api_key.company_id})",
            )
        return refusal

    def _over(self, kind, ident):
        key, left, limit, _ = _window(kind, ident, time.time())
        try:
            count = self.cache.get(key, 0)
        except Exception:
            logger.warning("auth failure store unavailable; not throttling", exc_info=True)
            return None
        if count >= limit:
            return exceptions.Throttled(wait=max(1, math.ceil(left)), detail=MESSAGES[kind])
        return None

    def _count(self, kind, ident, who):
        key, _, limit, period = _window(kind, ident, time.time())
        try:
            self.cache.add(key, 0, timeout=period + 1)
            try:
                count = self.cache.incr(key)
            except ValueError:  # the window's key expired between add and incr
                self.cache.set(key, 1, timeout=period + 1)
                count = 1
        except Exception:
            logger.warning("auth failure store unavailable; not throttling", exc_info=True)
            return
        if count == limit:
            logger.warning(
                "failed authentication: %s reached %s failures in %s s; further failures "
                "are answered 429 until the window ends",
                who,
                limit,
                period,
            )
