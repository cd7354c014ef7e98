"""Companies: list and detail of what the caller may see; superusers create and update."""

from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.response import Response

from aiadmin.api.pagination import AscendingIdCursorPagination
from companies.models import Company

from .serializers import CompanySerializer
from .tenancy import TenantAPIView


@extend_schema_view(
    get=extend_schema(summary="List the companies the caller may see", tags=["companies"]),
    post=extend_schema(
        summary="Create a company (superusers only)",
        tags=["companies"],
        responses={201: CompanySerializer},
        examples=[
            OpenApiExample(
                "Company",
                request_only=True,
                value={"name": "Salon Gamma", "slug": "gamma", "timezone": "Europe/Berlin"},
            )
        ],
    ),
)
class CompanyListView(mixins.ListModelMixin, mixins.CreateModelMixin, TenantAPIView):
    queryset = Company.objects.all()
    serializer_class = CompanySerializer
    company_field = "pk"
    pagination_class = AscendingIdCursorPagination

    def check_write_access(self, request):
        self.require_superuser()

    def get(self, request):
        return self.list(request)

    def post(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        company = serializer.save()
        return Response(self.get_serializer(company).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    get=extend_schema(summary="One company", tags=["companies"]),
    put=extend_schema(summary="Replace a company's fields (superusers only)", tags=["companies"]),
    patch=extend_schema(summary="Update a company (superusers only)", tags=["companies"]),
)
class CompanyDetailView(mixins.RetrieveModelMixin, mixins.UpdateModelMixin, TenantAPIView):
    queryset = Company.objects.all()
    serializer_class = CompanySerializer
    company_field = "pk"

    def check_write_access(self, request):
        self.require_superuser()

    def get_object(self):
        return self.company

    def get(self, request, company_id):
        return self.retrieve(request)

    def put(self, request, company_id):
        return self.update(request)

    def patch(self, request, company_id):
        return self.partial_update(request)
