from django.contrib import admin, messages
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from .models import Company, CompanyAPIKey, Membership

# The library's company-less APIKey would authenticate nobody here: hide it.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Company)
class CompanyAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "is_active", "timezone", "contact_email", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "slug", "contact_email", "contact_phone"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "company", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "company__name"]
    autocomplete_fields = ["user", "company"]


@admin.register(CompanyAPIKey)
class CompanyAPIKeyAdmin(APIKeyModelAdmin):
    """Create a key (shown once, in the message after saving) or revoke keys."""

    list_display = ["prefix", "name", "company", "created", "expiry_date", "revoked"]
    list_filter = ["revoked", "company"]
    search_fields = ["name", "prefix", "company__name"]
    actions = ["revoke_keys"]

    # Staff who are not superusers (given the key permissions) manage the keys of the
    # companies where they are owner or admin, and no others: a key is a tenant's credential.
    def managed_companies(self, request):
        if request.user.is_superuser:
            return Company.objects.all()
        managing = [Membership.Role.OWNER, Membership.Role.ADMIN]
        return Company.objects.filter(
            memberships__user=request.user, memberships__role__in=managing
        ).distinct()

    def get_queryset(self, request):
        return super().get_queryset(request).filter(company__in=self.managed_companies(request))

    def get_autocomplete_fields(self, request):
        return ["company"] if request.user.is_superuser else []

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "company":
            kwargs["queryset"] = self.managed_companies(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        # A key never moves to another company.
        return fields + ("company",) if obj is not None else fields

    @admin.action(description="Revoke selected keys (cannot be undone)")
    def revoke_keys(self, request, queryset):
        count = queryset.filter(revoked=False).update(revoked=True)
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)
