"""Message endpoints: send a text (idempotent), outbound status, inbound list
with filters, and the processing status of one inbound message.

`Idempotency-Key` works like Stripe's: the same key with the same body returns
the same message (one message, however often the request is retried, with
`Idempotent-Replayed: true` on replays); the same key with a different body is
a 409 that says so. Keys are per company.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import exceptions, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from aiadmin.api.errors import Conflict
from aiadmin.api.pagination import IdCursorPagination
from aiadmin.api.parsers import LimitedJSONParser
from companies.api.tenancy import TenantAPIView
from whatsapp.models import InboundMessage, OutboundMessage
from whatsapp.services.jobs import retry_processing_job
from whatsapp.services.outbound import (
    IdempotencyConflict,
    InvalidOutbound,
    OptedOut,
    queue_outbound_message,
)

from .media import is_media_request, send_media
from .serializers import (
    InboundFilterSerializer,
    InboundMessageSerializer,
    OutboundMessageSerializer,
    ProcessingJobSerializer,
    SendTextSerializer,
)

TAGS = ["messages"]
ERRORS = {
    401: OpenApiResponse(description="No, or an invalid, API key / login."),
    404: OpenApiResponse(description="No such company or message (or not yours)."),
}
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 128


def idempotency_key(request):
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise exceptions.ValidationError(
            {
                IDEMPOTENCY_HEADER: [
                    f"Must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
                    "(a UUID is a good key)."
                ]
            }
        )
    return key


class OutboundListView(TenantAPIView):
    queryset = OutboundMessage.objects.all()
    serializer_class = OutboundMessageSerializer
    pagination_class = IdCursorPagination
    throttle_scope = "api"
    # JSON (texts, media URLs, locations) and multipart file uploads (api/media.py).
    parser_classes = [LimitedJSONParser, MultiPartParser]

    def get_throttles(self):
        # Sending has its own, stricter bucket ("send"); reading shares "api".
        self.throttle_scope = "send" if self.request.method == "POST" else "api"
        return super().get_throttles()

    @extend_schema(
        summary="Outbound messages, newest first",
        tags=TAGS,
        responses={200: OutboundMessageSerializer(many=True), **ERRORS},
    )
    def get(self, request, company_id):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(OutboundMessageSerializer(page, many=True).data)

    @extend_schema(
        summary="Send a text, a file or a location (queued; the company's worker sends it)",
        description="A text: JSON {to, text}. A file: multipart/form-data {to, file, kind?, "
        "caption?, file_name?, voice_note?}, or JSON {to, media: {url, kind?, caption?, "
        "file_name?, voice_note?}} (an https URL the server fetches). A location: JSON {to, "
        "location: {latitude, longitude, name?, address?}}. Files are checked before "
        "anything is queued: 413 over WhatsApp's size limit for the kind, 400 when the "
        "content is not of the kind (checked by content). See docs/media.md.",
        tags=TAGS,
        request=SendTextSerializer,
        examples=[
            OpenApiExample(
                "To a phone number",
                request_only=True,
                value={"to": "+49 170 1234567", "text": "Your table is booked."},
            ),
            OpenApiExample(
                "To a group",
                request_only=True,
                value={"to": "120363025246125486@g.us", "text": "Hello all"},
            ),
        ],
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Retry-safe sends: the same key and body return the same message; "
                "the same key with another body is a 409.",
            )
        ],
        responses={
            202: OutboundMessageSerializer,
            400: OpenApiResponse(description="Invalid recipient, text or key."),
            409: OpenApiResponse(
                description="Idempotency key reused with a different body, or the recipient "
                "opted out."
            ),
            413: OpenApiResponse(description="Request body too large."),
            **ERRORS,
        },
    )
    def post(self, request, company_id):
        if is_media_request(request):  # a file, a media URL or a location
            message, created = send_media(self, request, idempotency_key(request))
            return self._accepted(message, created)
        serializer = SendTextSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = idempotency_key(request)
        try:
            message, created = queue_outbound_message(
                self.company.pk,
                serializer.validated_data["to"],
                serializer.validated_data["text"],
                idempotency_key=key,
            )
        except InvalidOutbound as exc:
            raise exceptions.ValidationError({"non_field_errors": [str(exc)]}) from None
        except OptedOut as exc:
            raise Conflict(
                f"{exc} (409: the contact opted out; they must write a start word first).",
                code="contact_opted_out",
            ) from None
        except IdempotencyConflict:
            raise Conflict(
                f"The {IDEMPOTENCY_HEADER} {key!r} was already used for a different message "
                "(another recipient or text). Use a new key for a new message.",
                code="idempotency_key_reused",
            ) from None
        return self._accepted(message, created)

    def _accepted(self, message, created):
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(
            OutboundMessageSerializer(message).data,
            status=status.HTTP_202_ACCEPTED,
            headers=headers,
        )


class OutboundDetailView(TenantAPIView):
    queryset = OutboundMessage.objects.all()
    serializer_class = OutboundMessageSerializer
    lookup_url_kwarg = "message_id"

    @extend_schema(
        summary="Status of one outbound message",
        tags=TAGS,
        responses={200: OutboundMessageSerializer, **ERRORS},
    )
    def get(self, request, company_id, message_id):
        return Response(OutboundMessageSerializer(self.get_object()).data)


class InboundListView(TenantAPIView):
    queryset = InboundMessage.objects.select_related("job")
    serializer_class = InboundMessageSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        summary="Inbound messages, newest first, with filters",
        tags=TAGS,
        parameters=[InboundFilterSerializer],
        responses={
            200: InboundMessageSerializer(many=True),
            400: OpenApiResponse(description="Invalid filter."),
            **ERRORS,
        },
    )
    def get(self, request, company_id):
        # A plain dict: an empty value (`?status=`) is then an error, not a missing filter.
        filters = InboundFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        page = self.paginate_queryset(filters.filter(self.get_queryset()))
        return self.get_paginated_response(InboundMessageSerializer(page, many=True).data)


class InboundDetailView(TenantAPIView):
    queryset = InboundMessage.objects.select_related("job")
    serializer_class = InboundMessageSerializer
    lookup_url_kwarg = "message_id"

    @extend_schema(
        summary="One inbound message with its processing status",
        tags=TAGS,
        responses={200: InboundMessageSerializer, **ERRORS},
    )
    def get(self, request, company_id, message_id):
        return Response(InboundMessageSerializer(self.get_object()).data)


class ProcessingStatusView(TenantAPIView):
    queryset = InboundMessage.objects.select_related("job")
    serializer_class = ProcessingJobSerializer
    lookup_url_kwarg = "message_id"

    @extend_schema(
        summary="Processing status of one inbound message",
        tags=TAGS,
        responses={200: ProcessingJobSerializer, **ERRORS},
    )
    def get(self, request, company_id, message_id):
        message = self.get_object()
        job = getattr(message, "job", None)
        if job is None:
            raise exceptions.NotFound("This message has no processing job.")
        return Response(ProcessingJobSerializer(job).data)


class ProcessingRetryView(TenantAPIView):
    """An operator's retry of a failed job (owners and admins, or the company's key)."""

    queryset = InboundMessage.objects.select_related("job")
    serializer_class = ProcessingJobSerializer
    lookup_url_kwarg = "message_id"

    def check_write_access(self, request):
        self.require_manager()

    @extend_schema(
        summary="Retry the failed processing job of one inbound message",
        description="Queues the job for one more attempt; the handler is told it is a retry "
        "and how the previous attempt ended. Only a failed job can be retried (409 otherwise).",
        request=None,
        tags=TAGS,
        responses={
            202: ProcessingJobSerializer,
            403: OpenApiResponse(description="A plain member may read, not retry."),
            409: OpenApiResponse(description="The job has not failed."),
            **ERRORS,
        },
    )
    def post(self, request, company_id, message_id):
        message = self.get_object()
        job = getattr(message, "job", None)
        if job is None:
            raise exceptions.NotFound("This message has no processing job.")
        if not retry_processing_job(job.pk):
            raise Conflict(
                f"The job is {job.get_status_display().lower()}, not failed: nothing to retry.",
                code="job_not_failed",
            )
        job.refresh_from_db()
        return Response(ProcessingJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
