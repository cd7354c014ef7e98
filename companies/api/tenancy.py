"""Tenant scoping for every API view, in one place.

`TenantAPIView` is the base of every authenticated endpoint:

* `visible_companies()` is what the caller may see, by the one definition
  (`Company.objects.visible_to`, companies/models.py): the key's company for
  an API key, every company for a superuser, the companies of their
  memberships for other staff.
* A URL with `company_id` resolves `self.company` before the handler runs,
  from the visible companies only: another tenant's company is a 404
  (indistinguishable from one that does not exist, never a 403).
* `get_queryset()` always filters by the company (or by the visible companies
  on list endpoints without one) through `company_field`.
"""

from rest_framework import exceptions
from rest_framework.generics import GenericAPIView

from companies.models import Company

from .permissions import IsTenantCaller


def visible_companies(request):
    """`request.user` is a staff user or a key's principal: the model decides."""
    return Company.objects.visible_to(request.user)


def can_manage(request, company):
    """Whether the caller may change the session of `company` (not only read it)."""
    return Company.objects.managed_by(request.user).filter(pk=company.pk).exists()


class TenantAPIView(GenericAPIView):
    permission_classes = [IsTenantCaller]
    company_kwarg = "company_id"
    company_field = "company"  # path from the queryset's model to Company
    company = None

    def visible_companies(self):
        return visible_companies(self.request)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authentication, permissions, throttles
        if self.company_kwarg in kwargs:
            self.company = self.resolve_company(kwargs[self.company_kwarg])
        if request.method not in ("GET", "HEAD", "OPTIONS") and hasattr(
            self, request.method.lower()
        ):  # a method the view lacks stays a 405
            self.check_write_access(request)

    def check_write_access(self, request):
        """Hook for views whose writes need more than read access (after the 404 check)."""

    def resolve_company(self, company_id):
        company = self.visible_companies().filter(pk=company_id).first()
        if company is None:
            raise exceptions.NotFound(f"No company with id {company_id}.")
        return company

    def get_queryset(self):
        queryset = super().get_queryset()
        if self.company is not None:
            return queryset.filter(**{self.company_field: self.company})
        return queryset.filter(**{f"{self.company_field}__in": self.visible_companies()})

    def require_manager(self):
        """Staff members with the plain member role may read, not control."""
        if self.company is None or not can_manage(self.request, self.company):
            raise exceptions.PermissionDenied(
                "Your role in this company may read but not control the session; "
                "an owner or admin can."
            )

    def require_superuser(self):
        if not self.request.user.is_superuser:
            raise exceptions.PermissionDenied("Only superusers may do this.")
