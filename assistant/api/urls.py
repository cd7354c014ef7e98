from django.urls import path

import aiadmin.api.converters  # noqa: F401  (registers <id:...>)

from . import views

urlpatterns = [
    path("assistant/<id:company_id>/", views.AssistantConfigView.as_view(), name="assistant"),
    path(
        "assistant/<id:company_id>/usage",
        views.AssistantUsageView.as_view(),
        name="assistant-usage",
    ),
]
