"""Who is calling: a company's API key, or a logged-in staff user (Django session).

    Authorization: Api-Key <prefix>.<secret>

A key acts for its company only. A present but unknown, revoked or expired
key is refused with 401 (never silently treated as anonymous). Failures are
throttled per client address and per key (aiadmin/api/auth_failures.py): 429
once over the limit, but the right key is always checked before its own
key's limit applies.
"""

from dataclasses import dataclass

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework_api_key.permissions import KeyParser

from aiadmin.api.auth_failures import AuthFailures
from companies.models import CompanyAPIKey


@dataclass(frozen=True)
class CompanyKeyPrincipal:
    """`request.user` for a request made with a company API key."""

    api_key: CompanyAPIKey
    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    @property
    def company_id(self):
        return self.api_key.company_id

    @property
    def tenant_company_id(self):
        """The one company a key acts for (see `CompanyQuerySet.with_role`)."""
        return self.api_key.company_id

    def __str__(self):
        return f"api-key {self.api_key.prefix} ({self.api_key.company_id})"


class CompanyAPIKeyAuthentication(BaseAuthentication):
    keyword = KeyParser.keyword

    def authenticate(self, request):
        raw = KeyParser().get_from_authorization(request)
        if raw is None:
            return None  # no key: let session authentication try
        failures = AuthFailures(request)
        failures.refuse_if_address_blocked()
        prefix, dot, _ = raw.strip().partition(".")
        api_key = None
        if dot and prefix:
            api_key = CompanyAPIKey.objects.select_related("company").filter(prefix=prefix).first()
        if api_key is None or not api_key.is_valid(raw.strip()):
            refusal = "Invalid API key."
        elif api_key.revoked:
            refusal = "This API key has been revoked."
        elif api_key.has_expired:
            refusal = "This API key has expired."
        else:
            return CompanyKeyPrincipal(api_key), api_key
        # The key's own budget applies only now: the right secret is never refused by it.
        raise failures.failed(api_key) or exceptions.AuthenticationFailed(refusal)

    def authenticate_header(self, request):
        return self.keyword  # makes "not authenticated" a 401, not a 403


class CompanyAPIKeyScheme(OpenApiAuthenticationExtension):
    target_class = "companies.api.authentication.CompanyAPIKeyAuthentication"
    name = "CompanyApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "A company's API key, created in the admin: `Api-Key <key>`.",
        }
