from django.contrib import admin
from django.urls import include, path

from whatsapp.metrics import metrics_view

urlpatterns = [
    # Before the admin site's catch-all: the connection-health dashboard.
    path("admin/whatsapp/health/", include("whatsapp.admin_pages.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("aiadmin.api.urls")),
    # Prometheus text format, computed from the database (METRICS_TOKEN protects it).
    path("metrics", metrics_view, name="metrics"),
]
