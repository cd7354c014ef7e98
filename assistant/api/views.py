"""A company's assistant: its configuration (the API key write-only) and its
usage per day. Everyone of the company reads; owners and admins write."""

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions
from rest_framework.response import Response

from assistant.models import AssistantConfig, AssistantRun
from companies.api.tenancy import TenantAPIView

from .serializers import AssistantConfigSerializer, UsageDaySerializer


@extend_schema_view(
    get=extend_schema(summary="The company's AI assistant", tags=["assistant"]),
    put=extend_schema(summary="Configure the company's AI assistant", tags=["assistant"]),
    patch=extend_schema(summary="Change the company's AI assistant", tags=["assistant"]),
)
class AssistantConfigView(TenantAPIView):
    queryset = AssistantConfig.objects.all()
    serializer_class = AssistantConfigSerializer

    def check_write_access(self, request):
        self.require_manager()

    def stored(self):
        return self.get_queryset().first()

    def get(self, request, company_id):
        config = self.stored()
        if config is None:
            raise exceptions.NotFound("This company has no assistant configured yet (PUT one).")
        return Response(self.get_serializer(config).data)

    def put(self, request, company_id):
        return self._write(request, partial=False)

    def patch(self, request, company_id):
        return self._write(request, partial=True)

    def _write(self, request, partial):
        config = self.stored()
        serializer = self.get_serializer(config, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        config = serializer.save(company=self.company)
        return Response(self.get_serializer(config).data)


@extend_schema_view(
    get=extend_schema(
        summary="The AI assistant's runs, tokens and cost per day (last 14 days, UTC)",
        tags=["assistant"],
        responses=UsageDaySerializer(many=True),
    ),
)
class AssistantUsageView(TenantAPIView):
    queryset = AssistantRun.objects.all()
    serializer_class = UsageDaySerializer
    pagination_class = None

    def get(self, request, company_id):
        days = self.get_queryset().live().cost_per_day()
        return Response(UsageDaySerializer(days, many=True).data)
