"""Tenant scoping for every model admin: the one base every registered
ModelAdmin derives from (tests/admin/test_tenancy_registry.py enforces it).

Django's model permissions decide what a staff user may do to a model at all;
on top of them, for a non-superuser:

* reading (list, search, filters, change page, history, autocomplete, the
  objects a form or an action can reach) covers the rows of the companies
  they may see (`Company.objects.visible_to`: any membership);
* writing (add, change, delete, bulk actions, the choices of every foreign key
  to a company's object) covers the companies they manage
  (`Company.objects.managed_by`: owner or admin), checked on the stored row
  and again on the row about to be saved;
* a model that belongs to no company (`company_field = None`) is for
  superusers only.

Rows of other companies are "not found" (Django's redirect to the index),
never a page that confirms they exist.
"""

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied

from .models import Company


class TenantScoping:
    """What model admins and inlines share: which rows, which choices."""

    # Lookup path from the model to its Company ("pk" for Company itself);
    # None: the model belongs to no company (superusers only).
    company_field = "company"

    def readable_companies(self, request):
        return Company.objects.visible_to(request.user)

    def writable_companies(self, request):
        return Company.objects.managed_by(request.user)

    def scoped(self, queryset, companies):
        """`queryset` narrowed to the rows of `companies` (no duplicates)."""
        if self.company_field is None:
            return queryset.none()
        owned = queryset.model._default_manager.filter(
            **{f"{self.company_field}__in": companies}
        )
        return queryset.filter(pk__in=owned.values("pk"))

    def stored_in(self, obj, companies):
        """Whether the stored row of `obj` belongs to one of `companies`."""
        return self.scoped(self.model._default_manager.filter(pk=obj.pk), companies).exists()

    def company_id_of(self, obj):
        """The company of an unsaved `obj`, following `company_field`; None if unknown."""
        if self.company_field is None:
            return None
        *path, last = self.company_field.split("__")
        if not path and last == "pk":
            return obj.pk
        target = obj
        for part in path:
            target = getattr(target, part, None)
            if target is None:
                return None
        return getattr(target, f"{last}_id", None)

    def choices_for(self, request, related_model):
        """Rows a form of this admin may point at (`None`: not a company's model)."""
        if related_model is Company:
            if request.user.is_superuser:
                return Company.objects.all()
            return self.writable_companies(request)
        related_admin = self.admin_site._registry.get(related_model)
        if not isinstance(related_admin, TenantScoping):
            return None
        rows = related_model._default_manager.all()
        if request.user.is_superuser:
            return rows
        return related_admin.scoped(rows, self.writable_companies(request))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        choices = self.choices_for(request, db_field.related_model)
        if choices is not None and "queryset" not in kwargs:
            kwargs["queryset"] = choices
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        choices = self.choices_for(request, db_field.related_model)
        if choices is not None and "queryset" not in kwargs:
            kwargs["queryset"] = choices
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return self.scoped(queryset, self.readable_companies(request))


class TenantScopedAdmin(TenantScoping, admin.ModelAdmin):
    # --- permissions: Django's model permissions, then the company --------
    def has_module_permission(self, request):
        if request.user.is_superuser:
            return super().has_module_permission(request)
        return (
            self.company_field is not None
            and super().has_module_permission(request)
            and self.readable_companies(request).exists()
        )

    def _allowed(self, request, obj, model_permission, companies):
        if request.user.is_superuser:
            return model_permission
        if self.company_field is None or not model_permission:
            return False
        if obj is None:
            return companies.exists()
        return self.stored_in(obj, companies)

    def has_view_permission(self, request, obj=None):
        allowed = super().has_view_permission(request, obj)
        if obj is None and self.company_field is not None:
            return allowed  # the list: get_queryset holds only readable rows
        return self._allowed(request, obj, allowed, self.readable_companies(request))

    def has_change_permission(self, request, obj=None):
        allowed = super().has_change_permission(request, obj)
        return self._allowed(request, obj, allowed, self.writable_companies(request))

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return self._allowed(request, obj, allowed, self.writable_companies(request))

    def has_add_permission(self, request):
        allowed = super().has_add_permission(request)
        return self._allowed(request, None, allowed, self.writable_companies(request))

    # --- lists: filters offer only what the list holds ------------------------
    def get_list_filter(self, request):
        filters = super().get_list_filter(request)
        if request.user.is_superuser:
            return filters
        return [self._related_only(entry) for entry in filters]

    def _related_only(self, entry):
        if isinstance(entry, str) and "__" not in entry:
            field = self.model._meta.get_field(entry)
            if field.is_relation:
                return (entry, admin.RelatedOnlyFieldListFilter)
        return entry

    # --- writes: the saved row must stay in a company the user manages -------
    def save_model(self, request, obj, form, change):
        if not request.user.is_superuser:
            company_id = self.company_id_of(obj)
            writable = self.writable_companies(request)
            if company_id is None or not writable.filter(pk=company_id).exists():
                raise PermissionDenied("Not a company you manage.")
        super().save_model(request, obj, form, change)

    def response_action(self, request, queryset):
        """Bulk actions reach the selected rows of the companies the user manages;
        the others are named as left alone."""
        if not request.user.is_superuser:
            writable = self.scoped(queryset, self.writable_companies(request))
            selected = request.POST.getlist(ACTION_CHECKBOX_NAME)
            skipped = queryset.filter(pk__in=selected).exclude(pk__in=writable.values("pk"))
            if skipped.exists():
                self.message_user(
                    request,
                    f"{skipped.count()} selected row(s) belong to companies you do not manage; "
                    "left as they are.",
                    messages.WARNING,
                )
            queryset = writable
        return super().response_action(request, queryset)


class TenantScopedInline(TenantScoping):
    """Mixed into an InlineModelAdmin: the parent's company decides writes."""

    def _parent_writable(self, request, obj):
        if request.user.is_superuser:
            return True
        if self.company_field is None:
            return False
        if obj is None:
            return self.writable_companies(request).exists()
        parent_admin = self.admin_site._registry.get(self.parent_model)
        if not isinstance(parent_admin, TenantScoping):
            return False
        return parent_admin.stored_in(obj, self.writable_companies(request))

    def has_add_permission(self, request, obj):
        return super().has_add_permission(request, obj) and self._parent_writable(request, obj)

    def has_change_permission(self, request, obj=None):
        allowed = super().has_change_permission(request, obj)
        return allowed and self._parent_writable(request, obj)

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and self._parent_writable(request, obj)
