"""Who may use the API at all (kept apart from the views: DRF imports its
default permission classes while its own views module is being imported)."""

from rest_framework.permissions import BasePermission

from aiadmin.api.auth_failures import AuthFailures
from companies.models import CompanyAPIKey


class IsTenantCaller(BasePermission):
    """A valid company API key, or a logged-in active staff user."""

    message = "Only staff users (or company API keys) may use the API."

    def has_permission(self, request, view):
        if isinstance(request.auth, CompanyAPIKey):
            return True
        user = request.user
        if not (user and user.is_authenticated):
            # No credentials at all (a wrong key already failed in authentication):
            # counts against the address' failure budget, 429 once over it.
            failures = AuthFailures(request)
            failures.refuse_if_address_blocked()
            failures.failed()
            return False
        return bool(user.is_active and user.is_staff)
