from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from whatsapp.metrics import metrics_view

urlpatterns = [
    # There is no public site: the address a person opens first leads to the admin.
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before the admin site's catch-all: the connection-health dashboard.
    path("admin/whatsapp/health/", include("whatsapp.admin_pages.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("aiadmin.api.urls")),
    # Prometheus text format, computed from the database (METRICS_TOKEN protects it).
    path("metrics", metrics_view, name="metrics"),
]
