"""One date/time format across the admin, in the company's time zone, named.

Every time a person reads is `2026-12-02 09:12:00 CET`: the row's company's
zone (Company.timezone), its abbreviation shown; rows of no company (workers,
worker incidents) in UTC, also named. Django's own rendering (read-only change
pages) uses the same format (aiadmin/formats/en/formats.py), and a change page
renders in the zone of the company of its object (`CompanyTimesAdmin`).
"""

import zoneinfo

from django.contrib import admin
from django.db import models
from django.utils import dateformat, timezone
from django.utils.html import format_html

from .admin_tenancy import TenantScopedAdmin

FORMAT = "Y-m-d H:i:s T"
UTC = zoneinfo.ZoneInfo("UTC")


def zone_of(company):
    return _zone(getattr(company, "timezone", ""))


def _zone(name):
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return UTC


def company_time(value, company=None):
    """`value` (an aware datetime) as text in the company's zone ('' for None)."""
    if not value:
        return ""
    return dateformat.format(timezone.localtime(value, zone_of(company)), FORMAT)


def time_html(value, company=None):
    """A <time> element: the formatted time, ISO in its datetime attribute."""
    if not value:
        return "-"
    return format_html(
        '<time datetime="{}">{}</time>', value.isoformat(), company_time(value, company)
    )


def common_zone(companies):
    """The zone all these companies share, else UTC (for a page-wide 'as of')."""
    names = {getattr(c, "timezone", "") or "UTC" for c in companies}
    return _zone(names.pop()) if len(names) == 1 else UTC


def _follow(obj, path):
    for part in path.split("__"):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


class CompanyTimesAdmin(TenantScopedAdmin):
    """Date-time list columns in the row's company zone, one format, the zone named;
    a change page rendered in its object's company zone."""

    def company_of(self, obj):
        if obj is None or not self.company_field:
            return None
        if self.company_field == "pk":
            return obj
        return _follow(obj, self.company_field)

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if self.company_field and self.company_field != "pk":
            qs = qs.select_related(self.company_field)
        return qs

    def get_list_display(self, request):
        return [self._time_column(name) for name in super().get_list_display(request)]

    def _time_column(self, name):
        if not isinstance(name, str):
            return name
        try:
            field = self.model._meta.get_field(name)
        except Exception:  # a method or an admin column, not a field
            return name
        if not isinstance(field, models.DateTimeField):
            return name

        @admin.display(description=field.verbose_name, ordering=name)
        def column(obj):
            return time_html(getattr(obj, name), self.company_of(obj))

        column.__name__ = f"{name}_in_company_zone"
        return column

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        obj = None
        if object_id is not None:
            obj = self.get_object(request, object_id)
        with timezone.override(zone_of(self.company_of(obj))):
            response = super().changeform_view(request, object_id, form_url, extra_context)
            if hasattr(response, "render") and not response.is_rendered:
                response.render()
        return response
