"""Tenant scoping for the plain model admins (events, messages, jobs, rules...).

On top of Django's model permissions (which decide whether a staff user may
see a model at all), a non-superuser only ever gets the rows of the companies
they belong to, and only those companies to choose from in forms.
"""

from django.contrib import admin

from companies.models import Company


class CompanyScopedAdmin(admin.ModelAdmin):
    company_field = "company"  # path from the model to its Company

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        visible = Company.objects.visible_to(request.user)
        return qs.filter(**{f"{self.company_field}__in": visible})

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model is Company and not request.user.is_superuser:
            kwargs["queryset"] = Company.objects.visible_to(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
