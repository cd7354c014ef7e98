from django.urls import path

from . import views

urlpatterns = [
    path("companies/", views.CompanyListView.as_view(), name="company-list"),
    path("companies/<int:company_id>/", views.CompanyDetailView.as_view(), name="company-detail"),
]
