"""The asynchronous answer of a turn (a webhook turn handler that answered 202).

POST .../turns/{turn}/reply with the turn's token (sent to the endpoint as
data.turn.token) and the replies. Tenant-scoped like every endpoint (the
company's API key or a login of the company); the token proves the caller
got this turn. Answered once: a second answer, or one after the turn was
handed to a person, is a 409.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response

from aiadmin.api.errors import Conflict
from companies.api.tenancy import TenantAPIView
from whatsapp.models import Turn
from whatsapp.services.turns import TurnReplyRefused, reply_to_turn


class TurnReplySerializer(serializers.Serializer):
    token = serializers.CharField(max_length=64)
    replies = serializers.ListField(
        child=serializers.CharField(max_length=4096), max_length=10, default=list
    )
    hand_over = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class TurnSerializer(serializers.ModelSerializer):
    class Meta:
        model = Turn
        fields = ["id", "chat_jid", "status", "message_count", "attempts", "result"]


class TurnReplyView(TenantAPIView):
    queryset = Turn.objects.all()
    serializer_class = TurnReplySerializer
    lookup_url_kwarg = "turn_id"
    throttle_scope = "send"

    @extend_schema(
        summary="Answer a turn asynchronously (webhook turn handler)",
        tags=["messages"],
        request=TurnReplySerializer,
        responses={
            202: TurnSerializer,
            403: OpenApiResponse(description="Wrong turn token."),
            404: OpenApiResponse(description="No such company or turn (or not yours)."),
            409: OpenApiResponse(description="The turn was answered or handed over already."),
        },
    )
    def post(self, request, company_id, turn_id):
        turn = self.get_object()
        body = TurnReplySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        hand_over = body.validated_data.get("hand_over")
        try:
            reply_to_turn(
                turn,
                body.validated_data["token"],
                [r for r in body.validated_data["replies"] if r.strip()],
                hand_over_note=hand_over if hand_over is not None else None,
            )
        except TurnReplyRefused as exc:
            if exc.status == 403:
                raise exceptions.PermissionDenied(str(exc)) from None
            raise Conflict(str(exc), code="turn_finished") from None
        turn.refresh_from_db()
        return Response(TurnSerializer(turn).data, status=status.HTTP_202_ACCEPTED)
