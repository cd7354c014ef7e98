"""Everything under /api/v1/: health, the OpenAPI schema and Swagger UI, and
the companies and WhatsApp endpoints. Unknown paths answer with a JSON 404."""

from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from .errors import api_not_found
from .health import HealthView

app_name = "api"

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    # For people typing the address: the catch-all below would answer 404.
    path("docs", RedirectView.as_view(pattern_name="api:docs")),
    path("schema", RedirectView.as_view(pattern_name="api:schema", query_string=True)),
    path("", include("companies.api.urls")),
    path("", include("whatsapp.api.urls")),
    path("", include("assistant.api.urls")),
    re_path(r"^", api_not_found),
]
