"""Mounted at /admin/whatsapp/health/ (before the admin site's own URLs)."""

from django.contrib import admin
from django.urls import path

from .dashboard import health_dashboard, start_company_session

urlpatterns = [
    path("", admin.site.admin_view(health_dashboard), name="whatsapp_health"),
    path(
        "start/<int:company_id>/",
        admin.site.admin_view(start_company_session),
        name="whatsapp_health_start",
    ),
]
