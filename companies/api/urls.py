from django.urls import path

import aiadmin.api.converters  # noqa: F401  (registers <id:...>)

from . import views

urlpatterns = [
    path("companies/", views.CompanyListView.as_view(), name="company-list"),
    path("companies/<id:company_id>/", views.CompanyDetailView.as_view(), name="company-detail"),
]
