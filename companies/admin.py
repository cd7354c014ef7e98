"""Companies, memberships, API keys, and the accounts (User, Group) admins.

Every admin here derives from `TenantScopedAdmin` (see admin_tenancy.py).
On top of it, for non-superusers:

* a company's own fields, creating and deleting companies: superusers only
  (as in the API); owners and admins manage its memberships, on its page or in
  the membership list;
* nobody adds, changes or removes a membership ranking above their own role,
  or grants such a role; the user of a new membership is one of the people of
  the companies they manage (superusers add anyone);
* accounts and groups: non-superusers see the users of their companies,
  read-only; they change no account, flag or permission.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import admin as auth_admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Count, Sum
from django.forms.models import BaseInlineFormSet
from django.template.defaultfilters import filesizeformat
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from .admin_tenancy import TenantScopedAdmin, TenantScopedInline
from .models import Company, CompanyAPIKey, Membership

User = get_user_model()

# The library's company-less APIKey would authenticate nobody here: hide it.
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


# --- memberships -------------------------------------------------------------


class MembershipForm(forms.ModelForm):
    """Refuses a role above the requester's own and a second membership of the
    same user (a form error, not the database's IntegrityError)."""

    requester = None  # set per request by the admin

    class Meta:
        model = Membership
        fields = ["user", "company", "role"]

    def company_id(self):
        company = self.cleaned_data.get("company")
        return company.pk if company is not None else self.instance.company_id

    def clean(self):
        cleaned = super().clean()
        company_id, user, role = self.company_id(), cleaned.get("user"), cleaned.get("role")
        requester = self.requester
        if requester is not None and company_id is not None:
            stored_role = self.initial.get("role") if self.instance.pk else None
            if stored_role and not Membership.may_grant(requester, company_id, stored_role):
                raise forms.ValidationError("This membership ranks above your own role.")
            if role and not Membership.may_grant(requester, company_id, role):
                self.add_error("role", "You may not grant a role above your own.")
        if company_id is not None and user is not None:
            others = Membership.objects.filter(company_id=company_id, user=user)
            if others.exclude(pk=self.instance.pk).exists():
                self.add_error("user", f"{user} is already a member of this company.")
        return cleaned


class MembershipFormSet(BaseInlineFormSet):
    def clean(self):
        super().clean()
        requester = self.form.requester
        if requester is None:
            return
        for form in self.deleted_forms:
            role = form.initial.get("role")
            if role and not Membership.may_grant(requester, self.instance.pk, role):
                raise forms.ValidationError(
                    f"You may not remove {form.instance.user}: their role ranks above yours."
                )


class MembershipChoices:
    """Which users a membership form offers, shared by the list and the inline."""

    def people_choices(self, request):
        if request.user.is_superuser:
            return User.objects.all()
        managed = self.writable_companies(request)
        return User.objects.filter(
            pk__in=Membership.objects.filter(company__in=managed).values("user_id")
        )

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            kwargs["queryset"] = self.people_choices(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def with_requester(form_class, request):
    return type(form_class.__name__, (form_class,), {"requester": request.user})


class MembershipInline(MembershipChoices, TenantScopedInline, admin.TabularInline):
    model = Membership
    form = MembershipForm
    formset = MembershipFormSet
    extra = 0

    def get_autocomplete_fields(self, request):
        return ["user"] if request.user.is_superuser else []

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        formset.form = with_requester(formset.form, request)
        return formset


@admin.register(Company)
class CompanyAdmin(TenantScopedAdmin):
    company_field = "pk"
    list_display = ["name", "slug", "is_active", "timezone", "contact_email", "media_storage",
                    "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "slug", "contact_email", "contact_phone"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def get_queryset(self, request):
        # Media files are stored once per company and content (docs/media.md).
        return super().get_queryset(request).annotate(
            media_bytes=Sum("media_files__size"), media_files_count=Count("media_files")
        )

    @admin.display(description="Media stored", ordering="media_bytes")
    def media_storage(self, obj):
        files = getattr(obj, "media_files_count", 0) or 0
        return f"{filesizeformat(getattr(obj, 'media_bytes', 0) or 0)} in {files} files"

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser

    def get_readonly_fields(self, request, obj=None):
        if request.user.is_superuser:
            return super().get_readonly_fields(request, obj)
        return [f.name for f in Company._meta.fields if f.editable]

    def get_prepopulated_fields(self, request, obj=None):
        return super().get_prepopulated_fields(request, obj) if request.user.is_superuser else {}


@admin.register(Membership)
class MembershipAdmin(MembershipChoices, TenantScopedAdmin):
    form = MembershipForm
    list_display = ["user", "company", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "company__name"]

    def get_autocomplete_fields(self, request):
        return ["user", "company"] if request.user.is_superuser else []

    def get_form(self, request, obj=None, **kwargs):
        return with_requester(super().get_form(request, obj, **kwargs), request)

    def _outranked(self, request, obj):
        return obj is not None and not Membership.may_grant(request.user, obj.company_id, obj.role)

    def has_change_permission(self, request, obj=None):
        allowed = super().has_change_permission(request, obj)
        return allowed and not self._outranked(request, obj)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and not self._outranked(request, obj)

    def delete_queryset(self, request, queryset):
        if not request.user.is_superuser:
            queryset = [m for m in queryset if not self._outranked(request, m)]
        for membership in queryset:
            membership.delete()


# --- API keys ------------------------------------------------------------------


@admin.register(CompanyAPIKey)
class CompanyAPIKeyAdmin(TenantScopedAdmin, APIKeyModelAdmin):
    """Create a key (shown once, in the message after saving) or revoke keys.

    A key is a tenant's credential: non-superusers (given the key permissions)
    see and manage the keys of the companies they manage, and no others."""

    list_display = ["prefix", "name", "company", "created", "expiry_date", "revoked"]
    list_filter = ["revoked", "company"]
    search_fields = ["name", "prefix", "company__name"]
    actions = ["revoke_keys"]

    def readable_companies(self, request):
        return self.writable_companies(request)

    def get_autocomplete_fields(self, request):
        return ["company"] if request.user.is_superuser else []

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj))
        # A key never moves to another company.
        return fields + ("company",) if obj is not None else fields

    @admin.action(description="Revoke selected keys (cannot be undone)")
    def revoke_keys(self, request, queryset):
        count = queryset.filter(revoked=False).update(revoked=True)
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


# --- accounts -----------------------------------------------------------------

admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(TenantScopedAdmin, auth_admin.UserAdmin):
    """Non-superusers (given the view permission) see the people of their
    companies, read-only: no account, password, flag or permission changes."""

    company_field = "memberships__company"

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(Group)
class GroupAdmin(TenantScopedAdmin, auth_admin.GroupAdmin):
    company_field = None  # permission bundles across companies: superusers only
