"""Conversation endpoints: chats with their threads (both sides in order),
sending as an operator (which pauses the bot), pause/resume, and contacts
(search, detail with chats, forget).

A thread page is ordered by (time, side, id) across inbound and outbound
messages; `before` / `after` take the opaque cursors of the `older` / `newer`
links. Without either, the newest page; `newer` is always given, so a client
polls it for what arrives next.
"""

from django.db.models import Q
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response

from aiadmin.api.errors import Conflict
from aiadmin.api.pagination import IdCursorPagination
from companies.api.tenancy import TenantAPIView
from whatsapp.models import Author, Chat, Contact, InboundMessage
from whatsapp.models.threads import PAGE_SIZE, thread_key, thread_page
from whatsapp.services.conversations import (
    forget_contact,
    pause_chat,
    resume_chat,
    send_as_operator,
)
from whatsapp.services.outbound import IdempotencyConflict, InvalidOutbound, OptedOut

from .conversation_serializers import (
    ChatFilterSerializer,
    ChatSerializer,
    ContactDetailSerializer,
    ContactSerializer,
    FilterSerializer,
    OperatorTextSerializer,
    PauseSerializer,
    ThreadMessageSerializer,
    decode_cursor,
    encode_cursor,
)
from .messages import IDEMPOTENCY_HEADER, idempotency_key

TAGS = ["conversations"]
ERRORS = {
    401: OpenApiResponse(description="No, or an invalid, API key / login."),
    404: OpenApiResponse(description="No such company, chat or contact (or not yours)."),
}
MAX_PAGE_SIZE = 200


def opted_out_conflict(exc):
    return Conflict(
        f"{exc} (409: the contact opted out; they must write a start word first).",
        code="contact_opted_out",
    )


class ChatListView(TenantAPIView):
    queryset = Chat.objects.select_related("contact")
    serializer_class = ChatSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        summary="Chats of the session, newest first (last message, unread, bot state, contact)",
        tags=TAGS,
        parameters=[ChatFilterSerializer],
        responses={200: ChatSerializer(many=True), **ERRORS},
    )
    def get(self, request, company_id):
        filters = ChatFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        chats = self.get_queryset()
        if "needs_human" in filters.validated_data:
            chats = chats.filter(needs_human=filters.validated_data["needs_human"] == "true")
        page = self.paginate_queryset(chats)
        return self.get_paginated_response(ChatSerializer(page, many=True).data)


class ChatDetailView(TenantAPIView):
    queryset = Chat.objects.select_related("contact")
    serializer_class = ChatSerializer
    lookup_url_kwarg = "chat_id"

    @extend_schema(summary="One chat", tags=TAGS, responses={200: ChatSerializer, **ERRORS})
    def get(self, request, company_id, chat_id):
        return Response(ChatSerializer(self.get_object()).data)


def thread_item(message):
    if isinstance(message, InboundMessage):
        job = getattr(message, "job", None)
        return {
            "id": f"in-{message.pk}",
            "direction": "in",
            "author": "client",
            "wa_message_id": message.wa_message_id,
            "kind": message.kind,
            "text": message.text,
            "push_name": message.push_name,
            "status": job.status if job else "",
            "note": job.result if job else "",
            "at": message.received_at,
        }
    return {
        "id": f"out-{message.pk}",
        "direction": "out",
        "author": message.author,
        "wa_message_id": message.wa_message_id,
        "kind": "text",
        "text": message.text,
        "push_name": "",
        "status": message.status,
        "note": message.last_error,
        "at": message.created_at,
    }


class ChatMessagesView(TenantAPIView):
    queryset = Chat.objects.select_related("contact")
    serializer_class = ThreadMessageSerializer
    lookup_url_kwarg = "chat_id"
    throttle_scope = "api"

    def get_throttles(self):
        self.throttle_scope = "send" if self.request.method == "POST" else "api"
        return super().get_throttles()

    @extend_schema(
        summary="The chat's thread: both sides in order, cursor pages in both directions",
        tags=TAGS,
        parameters=[
            OpenApiParameter("before", OpenApiTypes.STR, description="`older` cursor"),
            OpenApiParameter("after", OpenApiTypes.STR, description="`newer` cursor"),
            OpenApiParameter(
                "page_size", OpenApiTypes.INT, description=f"1 to {MAX_PAGE_SIZE} (default 50)"
            ),
        ],
        responses={
            200: inline_serializer(
                "ThreadPage",
                {
                    "older": serializers.CharField(allow_null=True),
                    "newer": serializers.CharField(allow_null=True),
                    "results": ThreadMessageSerializer(many=True),
                },
            ),
            400: OpenApiResponse(description="Invalid cursor or page size."),
            **ERRORS,
        },
    )
    def get(self, request, company_id, chat_id):
        chat = self.get_object()
        params = request.query_params
        if "before" in params and "after" in params:
            raise exceptions.ValidationError({"before": ["Give `before` or `after`, not both."]})
        try:
            before = decode_cursor(params["before"]) if "before" in params else None
            after = decode_cursor(params["after"]) if "after" in params else None
        except serializers.ValidationError as exc:
            raise exceptions.ValidationError({"cursor": exc.detail}) from None
        size = params.get("page_size", str(PAGE_SIZE))
        if not (size.isdigit() and 1 <= int(size) <= MAX_PAGE_SIZE):
            raise exceptions.ValidationError(
                {"page_size": [f"Must be a whole number from 1 to {MAX_PAGE_SIZE}."]}
            )
        rows, has_older, has_newer = thread_page(chat, before, after, int(size))

        def link(name, message):
            url = request.build_absolute_uri(request.path)
            return f"{url}?{name}={encode_cursor(*thread_key(message))}&page_size={size}"

        return Response(
            {
                "older": link("before", rows[0]) if rows and has_older else None,
                "newer": link("after", rows[-1]) if rows else None,
                "results": ThreadMessageSerializer([thread_item(m) for m in rows], many=True).data,
            }
        )

    @extend_schema(
        summary="Send a text into the chat as an operator (the bot pauses in this chat)",
        tags=TAGS,
        request=OperatorTextSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Retry-safe sends, as for outbound/.",
            )
        ],
        responses={
            202: ThreadMessageSerializer,
            400: OpenApiResponse(description="Empty or too long text, or a bad key."),
            409: OpenApiResponse(
                description="The contact opted out, or the key was used for another message."
            ),
            **ERRORS,
        },
    )
    def post(self, request, company_id, chat_id):
        chat = self.get_object()
        body = OperatorTextSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = idempotency_key(request)
        try:
            message, created = send_as_operator(chat, body.validated_data["text"], key)
        except OptedOut as exc:
            raise opted_out_conflict(exc) from None
        except InvalidOutbound as exc:
            raise exceptions.ValidationError({"non_field_errors": [str(exc)]}) from None
        except IdempotencyConflict:
            raise Conflict(
                f"The {IDEMPOTENCY_HEADER} {key!r} was already used for a different message.",
                code="idempotency_key_reused",
            ) from None
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(
            ThreadMessageSerializer(thread_item(message)).data,
            status=status.HTTP_202_ACCEPTED,
            headers=headers,
        )


class ChatPauseView(TenantAPIView):
    queryset = Chat.objects.select_related("contact")
    serializer_class = ChatSerializer
    lookup_url_kwarg = "chat_id"

    @extend_schema(
        summary="Pause the bot in this chat (a person takes over)",
        tags=TAGS,
        request=PauseSerializer,
        responses={200: ChatSerializer, 400: OpenApiResponse(description="Bad minutes."), **ERRORS},
    )
    def post(self, request, company_id, chat_id):
        chat = self.get_object()
        body = PauseSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        pause_chat(chat, Author.OPERATOR, minutes=body.validated_data.get("minutes"))
        return Response(ChatSerializer(chat).data)


class ChatResumeView(TenantAPIView):
    queryset = Chat.objects.select_related("contact")
    serializer_class = ChatSerializer
    lookup_url_kwarg = "chat_id"

    @extend_schema(
        summary="Resume the bot in this chat",
        tags=TAGS,
        request=None,
        responses={200: ChatSerializer, **ERRORS},
    )
    def post(self, request, company_id, chat_id):
        chat = self.get_object()
        resume_chat(chat, "api")
        return Response(ChatSerializer(chat).data)


class ContactListView(TenantAPIView):
    queryset = Contact.objects.all()
    serializer_class = ContactSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        summary="Contacts of the company, newest first; search by name or phone",
        tags=TAGS,
        parameters=[FilterSerializer],
        responses={200: ContactSerializer(many=True), **ERRORS},
    )
    def get(self, request, company_id):
        filters = FilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        contacts = self.get_queryset()
        term = filters.validated_data.get("search", "").strip()
        if term:
            digits = "".join(ch for ch in term if ch.isdigit())
            match = Q(push_name__icontains=term) | Q(notes__icontains=term)
            if digits:
                match |= Q(phone__contains=digits) | Q(phone_jid__contains=digits)
            contacts = contacts.filter(match)
        page = self.paginate_queryset(contacts)
        return self.get_paginated_response(ContactSerializer(page, many=True).data)


class ContactDetailView(TenantAPIView):
    queryset = Contact.objects.all()
    serializer_class = ContactDetailSerializer
    lookup_url_kwarg = "contact_id"

    def check_write_access(self, request):
        self.require_manager()

    @extend_schema(
        summary="One contact with its chats", tags=TAGS, responses={200: ContactDetailSerializer}
    )
    def get(self, request, company_id, contact_id):
        return Response(ContactDetailSerializer(self.get_object()).data)

    @extend_schema(
        summary="Forget this contact: delete their messages, chats and data",
        tags=TAGS,
        responses={
            200: inline_serializer(
                "Forgotten",
                {
                    "inbound": serializers.IntegerField(),
                    "outbound": serializers.IntegerField(),
                    "chats": serializers.IntegerField(),
                },
            ),
            403: OpenApiResponse(description="A plain member may read, not forget."),
            **ERRORS,
        },
    )
    def delete(self, request, company_id, contact_id):
        return Response(forget_contact(self.get_object()))
