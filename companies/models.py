"""Tenants: a Company, and which Django users belong to it with what role."""

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

from .inbound_handlers import handler_choices


def validate_timezone(value):
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. Europe/Berlin).")


class CompanyQuerySet(models.QuerySet):
    def visible_to(self, user):
        """Companies `user` may see: all for superusers, else their memberships."""
        if not user or not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self
        return self.filter(memberships__user=user).distinct()

    def managed_by(self, user):
        """Companies whose WhatsApp session `user` may control (start, stop, pair...):
        all for superusers, else those where they are owner or admin."""
        if not user or not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self
        roles = [Membership.Role.OWNER, Membership.Role.ADMIN]
        return self.filter(memberships__user=user, memberships__role__in=roles).distinct()


class Company(models.Model):
    """The tenant. Its primary key is what the API and URLs use."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    is_active = models.BooleanField(default=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    contact_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    contact_phone = models.CharField(max_length=32, blank=True)
    # A name from the handler registry (settings.WHATSAPP_INBOUND_HANDLERS), never a
    # dotted path: nothing stored here is imported. Blank = the settings default.
    inbound_handler = models.CharField(
        max_length=64,
        blank=True,
        choices=handler_choices,
        help_text="How inbound messages are answered. Empty: the default handler "
        "(setting WHATSAPP_INBOUND_HANDLER).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CompanyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "companies"

    def __str__(self):
        return self.name

    def role_of(self, user):
        """The role of `user` in this company, or None."""
        if user.is_superuser:
            return Membership.Role.OWNER
        membership = self.memberships.filter(user=user).first()
        return membership.role if membership else None


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["company", "user"], name="uniq_membership"),
        ]

    def __str__(self):
        return f"{self.user} @ {self.company} ({self.role})"

    @property
    def can_manage(self):
        return self.role in {self.Role.OWNER, self.Role.ADMIN}


class CompanyAPIKey(AbstractAPIKey):
    """A company's key for the REST API, stored hashed (shown once, when created).

    A key acts for its company only; revoking it cannot be undone."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="api_keys")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "company API key"
        verbose_name_plural = "company API keys"

    def __str__(self):
        return f"{self.name} ({self.company})"
