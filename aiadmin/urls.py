from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    # Before the admin site's catch-all: the connection-health dashboard.
    path("admin/whatsapp/health/", include("whatsapp.admin_pages.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("aiadmin.api.urls")),
]
